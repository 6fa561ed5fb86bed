"""Start-up time of the commands people type by hand: ``ctagg --help``, ``ctagg validate``, and
``ctagg status`` on an empty state, over repeated runs of the real console script.

Two conditions, each reported:

* ``bytecode``: compiled modules are cached (what an installed package or the container image
  has). Each command is run once untimed to fill a private cache (``PYTHONPYCACHEPREFIX`` in a
  temporary folder, so nothing is written into the tree), then timed.
* ``source``: nothing cached, every import compiles its module first (what a checkout with
  ``PYTHONDONTWRITEBYTECODE=1`` and a venv installed without bytecode pays on every run).

Wall time per run (median and best of ``--runs``), and user+system CPU of the child.

    .venv/bin/python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CTAGG = Path(sys.executable).with_name("ctagg")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [str(CTAGG), *argv], env=env, cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(runs):
        w, c = run_once(argv, env)
        walls.append(w)
        cpus.append(c)
    return {
        "median_s": statistics.median(walls),
        "best_s": min(walls),
        "cpu_median_s": statistics.median(cpus),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"archive: {{bucket: central}}\nstate: {{path: {tmp}/state.db}}\n", encoding="utf-8"
        )
        commands = {
            "--help": ["--help"],
            "validate": ["validate", str(ROOT / "config" / "example.yaml")],
            "status (empty state)": ["status", str(config)],
        }
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
        conditions = {
            "bytecode": {
                **{k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"},
                "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),
            },
            "source": {
                **base,
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONPYCACHEPREFIX": str(Path(tmp) / "empty"),
            },
        }
        head = f"{'command':24} {'condition':9} {'median':>8} {'best':>8} {'cpu':>8}"
        print(f"{head}  ({args.runs} runs)")
        for cond, env in conditions.items():
            for name, argv in commands.items():
                if cond == "bytecode":
                    run_once(argv, env)  # fill the private bytecode cache
                r = measure(argv, env, args.runs)
                print(
                    f"{name:24} {cond:9} {r['median_s']:7.3f}s {r['best_s']:7.3f}s "
                    f"{r['cpu_median_s']:7.3f}s"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
