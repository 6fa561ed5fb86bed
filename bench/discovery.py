"""Discovery throughput against an embedded moto server (not a test).

    python bench/discovery.py [ACCOUNTS] [REGIONS]

Seeds an Organization with ACCOUNTS member accounts in 3 OUs (tagged), an organization trail
and one account trail per account, then runs discover() cold (new broker: roles assumed,
models loaded) and warm (same broker, as the service does every cycle). Prints wall time,
accounts/s and the CPU time of this process. moto answers every call in this process too, so
the numbers are a floor of the real thing, and noisy on a shared machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    n_accounts = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    n_regions = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=url,
        AWS_EC2_METADATA_DISABLED="true",
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from aggregator import log
    from aggregator.aws.clients import Aws
    from aggregator.aws.credentials import CredentialBroker
    from aggregator.aws.discovery import discover
    from tests.orgseed import MGMT, make_settings, make_trail, seed_org

    log.configure("WARNING")
    layout = {
        f"Root/OU{k}": [(f"acct-{i}", {"env": f"e{k}"}) for i in range(n_accounts) if i % 3 == k]
        for k in range(3)
    }
    t0 = time.perf_counter()
    org = seed_org(layout)
    make_trail(MGMT, "us-east-1", "org", "org-logs", multi_region=True, organization=True)
    for i, acct in enumerate(org.accounts.values()):
        make_trail(acct, "us-east-1", f"own{i}", f"own-logs-{i}", multi_region=True)
    print(f"seeded {n_accounts} accounts in {time.perf_counter() - t0:.1f} s")
    regions = [
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "eu-west-1",
        "eu-west-2",
        "eu-central-1",
        "ap-northeast-1",
    ][:n_regions]
    settings = make_settings(
        url, discovery={"regions": {"include": regions}, "max_concurrency": 16}
    )

    async def run() -> None:
        aws = Aws(settings.aws)
        broker = CredentialBroker(settings, aws)
        for label in ("cold", "warm", "warm"):
            c0, t = cpu(), time.perf_counter()
            inv = await discover(settings, broker, aws)
            wall, used = time.perf_counter() - t, cpu() - c0
            print(
                f"{label}: {len(inv.accounts)} accounts x {n_regions} regions, "
                f"{len(inv.trails)} trails, {len(inv.sources)} sources, "
                f"{len(inv.failures)} failures in {wall:.2f} s "
                f"({len(inv.accounts) / wall:.1f} accounts/s; process CPU {used:.2f} s incl. moto)"
            )

    asyncio.run(run())
    server.stop()


if __name__ == "__main__":
    main()
