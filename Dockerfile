# The Tourniquet operator image: `tourniquet run` as a non-root user on a read-only root filesystem.
#   docker build -t tourniquet/operator:0.1.0 .
# The chart (charts/tourniquet) passes the arguments: --liveness, --namespace or --all-namespaces, --peering,
# --log-format.

# ---------------------------------------------------------------- build: a virtualenv with the operator
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/

# Every runtime dependency at the exact version constraints.txt pins (checked against pyproject.toml).
RUN python -m venv /opt/tourniquet \
    && /opt/tourniquet/bin/pip install --no-cache-dir --constraint constraints.txt . \
    && /opt/tourniquet/bin/pip check

# ---------------------------------------------------------------- runtime
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="tourniquet" \
      org.opencontainers.image.description="Incident response for AI-agent workloads on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd lookups.
RUN groupadd --system --gid 10001 tourniquet \
    && useradd --system --uid 10001 --gid tourniquet --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tourniquet

COPY --from=build /opt/tourniquet /opt/tourniquet

ENV PATH=/opt/tourniquet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
# 8080: Kopf's health endpoint (--liveness); 9090: /metrics and the Alertmanager receiver.
EXPOSE 8080 9090

ENTRYPOINT ["tourniquet", "run"]
CMD ["--liveness=http://0.0.0.0:8080/healthz", "--all-namespaces"]
