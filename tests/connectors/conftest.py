"""Fixtures for connector tests: a real rsyslogd for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rsyslog import Rsyslog


@pytest.fixture(scope="session")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    if not Rsyslog.available():
        pytest.fail("rsyslogd/openssl missing: apt-get install rsyslog rsyslog-gnutls openssl")
    server = Rsyslog(Path(tmp_path_factory.mktemp("rsyslog")))
    server.start()
    yield server
    server.stop()
