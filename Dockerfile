# syntax=docker/dockerfile:1
# smtprelay's container image (docs/deploy.md):
#
#     docker build -t smtprelay .
#     docker run -d --name smtprelay -p 587:2587 -p 465:2465 -p 127.0.0.1:8080:8080 \
#         -v smtprelay-data:/var/lib/smtprelay \
#         -v ./smtprelay.yaml:/etc/smtprelay/smtprelay.yaml:ro smtprelay
#
# deploy/compose.yaml runs two nodes and their Redis. Checked by hadolint and, where a
# Docker daemon answers, built by tests/e2e/test_deploy.py.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: wheels of smtprelay and of every dependency -------------------------------
# On the runtime's own base image, so that dependencies chosen by Python version (and
# compiled ones) are the runtime's.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest of the checkout out).
COPY pyproject.toml README.md LICENSE ./
COPY smtprelay ./smtprelay
RUN pip wheel --wheel-dir /wheels .

# -- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 SMTPRELAY_CONFIG=/etc/smtprelay/smtprelay.yaml
# tini as PID 1: the relay handles SIGTERM and SIGHUP itself and reaps the children it
# starts (SMTP workers, transform workers), but as PID 1 it would also inherit every
# orphaned grandchild, which nothing would reap. Debian's package follows the base
# image's release, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid and gid, so a bind-mounted data directory can be given to them
# (chown 10025:10025) and match across image versions.
RUN groupadd --system --gid 10025 smtprelay \
    && useradd --system --uid 10025 --gid smtprelay --home-dir /var/lib/smtprelay \
        --no-create-home --shell /usr/sbin/nologin smtprelay \
    && install -d -o smtprelay -g smtprelay -m 0700 /var/lib/smtprelay \
    && install -d -m 0755 /etc/smtprelay
# From the build stage's wheels, mounted for this step only: no compiler, no wheel
# files left in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/smtprelay-*.whl \
    && smtprelay --version
COPY deploy/docker/smtprelay.yaml /etc/smtprelay/smtprelay.yaml
# The spool, state database and keys: a named volume keeps them across containers
# (and, named, is created owned by smtprelay as this directory is).
VOLUME ["/var/lib/smtprelay"]
WORKDIR /var/lib/smtprelay
# Unprivileged ports (the relay runs as smtprelay): publish them as 587 and 465.
EXPOSE 2587 2465 8080
# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10025:10025
# Liveness from the relay's own HTTP listener, with the image's Python (no curl).
# SMTPRELAY_HEALTHCHECK_URL follows a changed http.listen.
ENV SMTPRELAY_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SMTPRELAY_HEALTHCHECK_URL'], timeout=4)"]
# SIGTERM drains: sessions get 30 s, deliveries 10 s more. docker stop's default 10 s
# is too short: give it `--stop-timeout 45` (compose.yaml: stop_grace_period: 45s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "smtprelay"]
CMD ["serve"]
