"""A real rsyslogd for tests: own config, pid file and work dir, 127.0.0.1 high ports.

Inputs: imudp; imtcp (octet-counted framing); imtcp over TLS (gtls, anonymous clients) and
imtcp over TLS requiring a client certificate signed by the test CA (mutual TLS); imrelp (RELP,
Debian package ``rsyslog-relp``) plain and over TLS. Certificates
come from ``openssl`` with ``subjectAltName = IP:127.0.0.1``. Every message is written as
``%jsonmesg%`` (rsyslog's own parse of the RFC 5424 fields) to one file.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """CA, server cert (SAN IP:127.0.0.1) and client cert, all EC P-256, valid two days."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ctagg-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    for name, eku, san in (
        ("server", "serverAuth", "IP:127.0.0.1"),
        ("client", "clientAuth", "DNS:ctagg-client"),
    ):
        _openssl(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n"
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    # a CA the receiver does not trust, for negative tests
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=other-ca",
        cwd=d,
    )


CONF = """
global(workDirectory="{work}" maxMessageSize="256k"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/server.pem"
       defaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imudp")
module(load="imtcp" maxSessions="200")
module(load="imrelp")
template(name="jsonl" type="string" string="%jsonmesg%\\n")
ruleset(name="out") {{
  action(type="omfile" file="{out}" template="jsonl" asyncWriting="off" flushOnTXEnd="on")
}}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="out")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="out"
      supportOctetCountedFraming="on" streamDriver.name="ptcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="out" name="tls"
      supportOctetCountedFraming="on" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{mtls}" ruleset="out" name="mtls"
      supportOctetCountedFraming="on" streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
input(type="imrelp" address="127.0.0.1" port="{relp}" ruleset="out" maxDataSize="256k")
input(type="imrelp" address="127.0.0.1" port="{relp_tls}" ruleset="out" maxDataSize="256k"
      tls="on" tls.caCert="{d}/ca.pem" tls.myCert="{d}/server.pem"
      tls.myPrivKey="{d}/server.key" tls.authMode="certvalid")
"""


@dataclass
class Rsyslog:
    root: Path
    udp: int = 0
    tcp: int = 0
    tls: int = 0
    mtls: int = 0
    relp: int = 0
    relp_tls: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _offset: int = 0
    _seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out.jsonl"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @classmethod
    def available(cls) -> bool:
        return shutil.which("rsyslogd") is not None and shutil.which("openssl") is not None

    def start(self) -> None:
        certs = self.certs
        if not (certs / "ca.pem").exists():
            certs.mkdir(parents=True, exist_ok=True)
            make_certs(certs)
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        if not self.udp:
            self.udp = free_port(socket.SOCK_DGRAM)
            self.tcp, self.tls, self.mtls = free_port(), free_port(), free_port()
            self.relp, self.relp_tls = free_port(), free_port()
        conf = self.root / "rsyslog.conf"
        conf.write_text(
            CONF.format(
                work=work,
                d=certs,
                out=self.out,
                udp=self.udp,
                tcp=self.tcp,
                tls=self.tls,
                mtls=self.mtls,
                relp=self.relp,
                relp_tls=self.relp_tls,
            )
        )
        check = subprocess.run(
            ["rsyslogd", "-N1", "-f", str(conf)], check=False, capture_output=True
        )
        assert check.returncode == 0, (
            check.stderr.decode() + "\n(imrelp comes with the rsyslog-relp package: make sysdeps)"
        )
        pid = self.root / "rsyslogd.pid"
        pid.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "rsyslogd.err").open("ab"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._listening():
                return
            assert self.proc.poll() is None, (self.root / "rsyslogd.err").read_text()
            time.sleep(0.05)
        raise AssertionError("rsyslogd did not start listening")

    def _listening(self) -> bool:
        for port in (self.tcp, self.tls, self.mtls, self.relp, self.relp_tls):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return False
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def messages(self) -> list[dict[str, Any]]:
        """Every message rsyslog wrote so far, parsed."""
        if self.out.exists():
            with self.out.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            for line in data[:end].splitlines():
                if line.strip():
                    self._seen.append(json.loads(line))
        return list(self._seen)

    def wait_for(self, pred: Any, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Messages matching ``pred``, once at least ``count`` arrived (or the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [m for m in self.messages() if pred(m)]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


@pytest.fixture(scope="session", name="rsyslog")
def rsyslog_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    """A running rsyslogd (import this fixture into a test module to use it)."""
    if not Rsyslog.available():
        pytest.fail(
            "rsyslogd/openssl missing: make sysdeps "
            "(apt-get install rsyslog rsyslog-gnutls rsyslog-relp openssl)"
        )
    server = Rsyslog(Path(tmp_path_factory.mktemp("rsyslog")))
    server.start()
    yield server
    server.stop()
