"""moto's server in its own process, counting the requests it answers (for the scale-out and
idle benchmarks).

    .venv/bin/python -m bench.motoserver PORT

The same WSGI application ``moto_server`` runs (``DomainDispatcherApplication``), behind a
small counting middleware: every request is classified at moto by service (from the SigV4
credential scope) and, for S3, by operation (LIST, GET, HEAD, PUT, DELETE, POST). ``GET
/_bench/counts`` answers the counts as JSON, ``POST /_bench/counts`` answers them and starts
from zero. Counting costs a dict update per request, no extra process or hop (a reverse proxy
in front of moto would add its own CPU on the same two cores).

``start(port)`` starts it as a child process and waits until it answers; ``cpu_secs(pid)``
reads a process's user + system CPU from ``/proc/PID/stat`` (the moto process's CPU is what
the shards share the machine with).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def classify(environ: dict[str, Any]) -> str:
    """``s3:LIST``, ``s3:GET``, ``sts``, ... for one request (path-style S3 addressing);
    requests for ctagg's own objects under ``_ctagg/`` (writer markers, the layout record,
    state snapshots) are apart: ``s3:GET _ctagg``, ``s3:PUT _ctagg``."""
    m = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = m[1] if m else "unsigned"
    if service != "s3":
        return service
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/").lstrip("/")
    query = environ.get("QUERY_STRING", "")
    has_key = "/" in path and path.split("/", 1)[1] != ""
    if method == "GET" and not has_key:
        return "s3:LIST" if ("list-type" in query or "prefix" in query or not query) else "s3:GET"
    if method == "POST" and "delete" in query:
        return "s3:DELETE"
    if has_key and path.split("/", 1)[1].startswith("_ctagg/"):
        return f"s3:{method} _ctagg"  # ctagg's own objects (markers, layout, snapshots)
    return f"s3:{method}"


class Counting:
    """WSGI middleware: count, then hand the request to moto."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_bench/counts":
            with self.lock:
                body = json.dumps(dict(self.counts)).encode()
                if environ.get("REQUEST_METHOD") == "POST":
                    self.counts.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        kind = classify(environ)
        with self.lock:
            self.counts[kind] += 1
        return self.app(environ, start_response)


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, True, request_handler=MotoRequestHandler)
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> tuple[subprocess.Popen[bytes], str]:
    """The counting moto server as a child process (not pinned: it shares the cores with
    whatever is measured, as moto would); returns it and its URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.motoserver", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_bench/counts", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("moto did not start")


def counts(url: str, *, reset: bool = False) -> dict[str, int]:
    req = urllib.request.Request(url + "/_bench/counts", method="POST" if reset else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        got: dict[str, int] = json.loads(resp.read())
        return got


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def load() -> str:
    """The 1/5/15-minute load averages (others run tests on this machine)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
