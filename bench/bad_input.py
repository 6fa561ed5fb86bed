"""Bad-input benchmark: what corrupt and mutated objects cost the decode path, and the peak
memory of refusing a gzip bomb.

    .venv/bin/python bench/bad_input.py [--objects 200] [--records 1000] [--bomb-gib 1]

Objects hold ``--records`` records each, built from shared/testdata (unique eventIDs). Reported:

* ``collect.decode_log`` throughput (objects/s, MB/s of compressed input) over valid objects,
  over byte-mutated copies of them (1-8 random edits each, seeded), and over corrupt ones
  (a flipped byte in the deflate stream, a truncated tail, non-JSON) — a bad object must cost
  no more than a good one
* the peak RSS of a child process refusing a ``--bomb-gib`` gzip bomb (built streaming) under
  the default ``collect.max_object_bytes``, against the stated bound (max_object_bytes + 96 MiB)
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT.parent / "shared" / "testdata"
sys.path.insert(0, str(ROOT))

from aggregator.ingest.collect import BadObject, decode_log

LIMITS = {"max_object_bytes": 512 << 20, "max_record_bytes": 1 << 20}

_CHILD = """
import sys
from isal import isal_zlib
from aggregator.config import parse_settings
from aggregator.ingest.collect import BadObject, decode_log
cfg = parse_settings({"archive": {"bucket": "central"}}).collect
c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
zeros = bytes(1 << 20)
data = b"".join([c.compress(zeros) for _ in range(int(sys.argv[1]) >> 20)] + [c.flush()])
def hwm():  # VmHWM: ru_maxrss would carry over a parent's peak across fork and exec
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1])
base = hwm()
try:
    decode_log(data, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes)
    reason = "decoded"
except BadObject as exc:
    reason = str(exc)
print(len(data), cfg.max_object_bytes, base * 1024,
      hwm() * 1024, reason, sep="\\t")
"""


def real_records() -> list[dict[str, Any]]:
    out = []
    for path in sorted(TESTDATA.rglob("*.json")):
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
            out.extend(r for r in doc["Records"] if isinstance(r, dict))
    return out


def objects(n: int, per: int) -> list[bytes]:
    recs = real_records()
    out = []
    for i in range(n):
        batch = [dict(recs[(i * per + j) % len(recs)], eventID=f"b-{i}-{j}") for j in range(per)]
        out.append(gzip.compress(json.dumps({"Records": batch}).encode(), 6))
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        op = rng.randrange(4)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf.insert(i, rng.randrange(256))
        elif op == 2:
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


def corrupt(data: bytes, i: int) -> bytes:
    kind = i % 3
    if kind == 0:
        mid = len(data) // 2
        return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
    if kind == 1:
        return data[: len(data) * 2 // 3]
    return gzip.compress(b"<html>not json</html>" * 1000)


def run(name: str, objs: list[bytes], per: int) -> None:
    bad = 0
    t = time.perf_counter()
    for data in objs:
        try:
            decode_log(data, **LIMITS)
        except BadObject:
            bad += 1
    secs = time.perf_counter() - t
    mb = sum(map(len, objs)) / 1e6
    print(
        f"{name:<10} {len(objs):>5} objects  {bad:>5} bad  {len(objs) / secs:>9.0f} objects/s"
        f"  {len(objs) * per / secs:>9.0f} records/s  {mb / secs:>7.1f} MB/s compressed"
    )


def bomb(gib: float) -> None:
    size = int(gib * (1 << 30))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(size)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    comp, cap, base, peak, reason = out.split("\t")
    bound = int(cap) + (96 << 20)
    print(
        f"bomb       {size >> 20} MiB of zeros in {int(comp) / 1e6:.2f} MB gzip: {reason}\n"
        f"           peak RSS {int(peak) >> 20} MiB (before decoding {int(base) >> 20} MiB), "
        f"bound max_object_bytes {int(cap) >> 20} MiB + 96 MiB = {bound >> 20} MiB: "
        f"{'within' if int(peak) <= bound else 'OVER'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--bomb-gib", type=float, default=1.0)
    args = ap.parse_args()
    good = objects(args.objects, args.records)
    rng = random.Random(13)
    mutated = [mutate(d, rng) for d in good]
    broken = [corrupt(d, i) for i, d in enumerate(good)]
    print(f"{args.records} records/object, {sum(map(len, good)) / len(good) / 1e3:.0f} KB each")
    for _ in range(2):  # the second round is the one to read (warm caches)
        run("valid", good, args.records)
        run("mutated", mutated, args.records)
        run("corrupt", broken, args.records)
    bomb(args.bomb_gib)


if __name__ == "__main__":
    main()
