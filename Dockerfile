# One image for every component: `llmkeys operator`, `llmkeys proxy`, `llmkeys serve`.
# Build: `make image`. Plain Dockerfile syntax only (no `RUN --mount`, heredocs, `COPY --chmod` or
# `--link`), so the legacy builder (DOCKER_BUILDKIT=0) builds it as well as BuildKit does;
# tests/unit/test_chart_image.py keeps it that way.
#
# Base image pin: PYTHON_IMAGE names the base of both stages. Release builds pass it pinned by
# digest, e.g.
#   make image PYTHON_IMAGE=docker.io/library/python:3.11-slim@sha256:<64 hex digits>
# and `make image REQUIRE_PINNED_BASE=1` refuses an unpinned one. Read the digest of the tag you
# reviewed with `docker buildx imagetools inspect docker.io/library/python:3.11-slim` (or
# `docker inspect --format '{{index .RepoDigests 0}}' python:3.11-slim` after a pull). No digest is
# committed here: this file was written without access to a registry, and a made-up digest would
# only break every build.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim

# --- build: wheels of the project and every dependency, installed into a venv ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY proxy ./proxy
# The vertex extra (cryptography) lets the proxy mint Vertex AI tokens from service accounts.
RUN pip wheel --wheel-dir /wheels ".[vertex]" \
    && python -m venv /opt/llmkeys \
    && /opt/llmkeys/bin/pip install --no-index --find-links=/wheels "llmkeys[vertex]"

# --- runtime: the venv only (same base, same path), no compilers, no build files, non-root --------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/llmkeys/bin:$PATH
COPY --from=build /opt/llmkeys /opt/llmkeys
RUN groupadd --system --gid 65532 llmkeys \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llmkeys
# Numeric so Kubernetes can verify runAsNonRoot without resolving names.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["llmkeys"]
CMD ["proxy"]
