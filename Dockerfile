# syntax=docker/dockerfile:1
# Image of the bridge daemon: `docker build -t customevent-bridge .`
#
# The builder stage installs the project (non-editable, from this repo's pyproject.toml) into a
# virtualenv; the final stage gets only that virtualenv, so no compiler, pip cache or source tree
# ships. The venv lives at the same path in both stages because its scripts hard-code it.
#
# KEEP IN STEP with scripts/install-like-image.sh: CI runs that script to prove these install
# steps without a Docker engine. A change to the COPY list or the pip/venv commands below goes
# into the script too.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the build needs (see .dockerignore); the same files the script stages.
COPY pyproject.toml README.md ./
COPY adapter/ ./adapter/
RUN python -m venv /opt/customevent \
 && /opt/customevent/bin/pip install /src \
 && /opt/customevent/bin/customevent --help >/dev/null

FROM ${PYTHON_IMAGE}
# Fixed uid/gid so that Kubernetes' runAsNonRoot can check it and volumes can be chowned to it.
RUN groupadd --system --gid 10001 customevent \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin customevent
COPY --from=builder /opt/customevent /opt/customevent
# Bytecode was compiled at install time; the root filesystem is read-only in the Helm chart.
ENV PATH=/opt/customevent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUSTOMEVENT_HTTP__HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
EXPOSE 8280
ENTRYPOINT ["customevent"]
CMD ["serve"]
