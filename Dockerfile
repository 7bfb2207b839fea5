# Image of the bridge daemon: `make image` (scripts/build-image.sh), or by hand from the repo's root:
#   docker build -t customevent-bridge:0.1.0 .        (or podman build; BuildKit for docker)
#
# No `# syntax=` line: BuildKit would fetch that frontend from a registry, and the built-in one
# has all this file needs. Builds on the official image (the default) and on a Debian-python base
# (`make base-image`, for machines that reach no registry):
#   --build-arg PYTHON_IMAGE=localhost/customevent-python:3.11-bookworm
# A CA bundle for the package index (a TLS-inspecting proxy), used only while pip runs and never
# stored in a layer:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
#
# The builder stage installs the pinned dependencies (requirements/image.txt, from `make lock`,
# checked against their hashes), then the project itself without resolving anything, into a
# virtualenv; the final stage gets only that virtualenv, so no compiler, pip or source tree ships.
# The venv lives at the same path in both stages because its scripts hard-code it.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the build needs (see .dockerignore).
COPY requirements/image.txt ./requirements/
COPY pyproject.toml README.md ./
COPY adapter/ ./adapter/
# `python3`, not `python`: a Debian base has no `python` without python-is-python3. The venv's own
# pip and setuptools are the base's (pip 23 on Debian 12); the lock brings the setuptools the
# project builds with.
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/customevent \
 && /opt/customevent/bin/pip install --require-hashes --no-deps -r requirements/image.txt \
 && /opt/customevent/bin/pip install --no-deps --no-build-isolation --no-index /src \
 && /opt/customevent/bin/pip check \
 && /opt/customevent/bin/pip uninstall -y -q setuptools pip \
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
