# syntax=docker/dockerfile:1
# cloudtrail-aggregator image. Build:  docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm -t ctagg .
# Runtime dependencies come only from requirements-runtime.lock (hashed); the build backend only
# from requirements-build.lock (hashed). The final stage has no compilers, no pip cache and runs
# as a non-root user with a read-only root filesystem (state on /var/lib/ctagg, TMPDIR=/tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------ builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-build.lock requirements-runtime.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements-build.lock \
 && python -m venv /opt/ctagg \
 && /opt/ctagg/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
COPY connectors ./connectors
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
 && /opt/ctagg/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
 && /opt/ctagg/bin/python -m compileall -q /opt/ctagg/lib \
 && /opt/ctagg/bin/pip uninstall --yes pip

# ------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG CTAGG_UID=10001
LABEL org.opencontainers.image.title="cloudtrail-aggregator" \
      org.opencontainers.image.description="Collect, dedupe, verify and forward CloudTrail across an AWS Organization" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${CTAGG_UID}" ctagg \
 && useradd --system --uid "${CTAGG_UID}" --gid ctagg --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ctagg \
 && mkdir -p /var/lib/ctagg /etc/ctagg \
 && chown "${CTAGG_UID}:${CTAGG_UID}" /var/lib/ctagg
COPY --from=builder /opt/ctagg /opt/ctagg
# state.path and service.health_host default to these when the config leaves them out: the
# state on the volume (an absolute path), /livez /readyz /metrics reachable from outside the
# container (outside a container ctagg binds 127.0.0.1).
ENV PATH=/opt/ctagg/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    CTAGG_STATE_PATH=/var/lib/ctagg/state.db \
    CTAGG_HEALTH_HOST=0.0.0.0
WORKDIR /var/lib/ctagg
VOLUME ["/var/lib/ctagg"]
USER ${CTAGG_UID}:${CTAGG_UID}
EXPOSE 9108
ENTRYPOINT ["ctagg"]
CMD ["run", "/etc/ctagg/config.yaml"]
