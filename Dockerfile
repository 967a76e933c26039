# evalstream: one image for every command (`process` by default; `alerts listen`, `send`,
# `simulate`, ... by overriding the command).
#
#   docker build -t evalstream .
#   docker run --rm -p 8080:8080 -v evalstream-data:/var/lib/evalstream evalstream process --simulate
#
# Settings come from EVALSTREAM_* environment variables (see docs/azure.md and README.md).
# The embedded backend keeps its SQLite files in the /var/lib/evalstream volume.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A virtualenv that the runtime stage copies whole: no build tools or pip caches in the final
# image. Every dependency ships manylinux wheels for CPython 3.11; gcc is for evalstream's own
# hot path, which setup.py compiles with mypyc (the image has Python's headers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore allows only pyproject.toml, setup.py, README.md and the package folders in.
COPY . .
RUN /opt/venv/bin/pip install .


FROM python:3.11-slim

# Inside a container the ingest endpoint must listen beyond loopback to be published, so
# `process` needs EVALSTREAM_INGEST__AUTH__API_KEYS (`evalstream ingest-key NAME` prints it)
# or --no-ingest; it refuses to start otherwise.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EVALSTREAM_EMBEDDED__DATA_DIR=/var/lib/evalstream \
    EVALSTREAM_INGEST__HOST=0.0.0.0 \
    EVALSTREAM_INGEST__PORT=8080

RUN groupadd --system --gid 10001 evalstream \
    && useradd --system --uid 10001 --gid evalstream --no-create-home \
        --home-dir /var/lib/evalstream --shell /usr/sbin/nologin evalstream \
    && mkdir -p /var/lib/evalstream \
    && chown evalstream:evalstream /var/lib/evalstream

COPY --from=build /opt/venv /opt/venv

USER evalstream
WORKDIR /var/lib/evalstream
# Embedded backend: event log, store, alert topic and the user-hash key live here. Mount a
# named volume so they survive container restarts.
VOLUME ["/var/lib/evalstream"]
EXPOSE 8080

# GET /healthz on the ingest endpoint (python:3.11-slim has no curl; urllib is enough).
# Commands that serve no ingest endpoint (`alerts listen`, `process --no-ingest`) should
# disable this check (compose: `healthcheck: {disable: true}`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('EVALSTREAM_INGEST__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) makes the processor finish the batch in flight, checkpoint and exit;
# give it a stop timeout longer than one batch (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["evalstream"]
CMD ["process"]
