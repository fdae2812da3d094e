# syntax=docker/dockerfile:1
# One image for every component: `llmkeys operator`, `llmkeys proxy`, `llmkeys serve`.
# Build: `make image` (docker build -t llmkeys:dev .).

# --- build: the project wheel plus wheels of every dependency -------------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY proxy ./proxy
# The vertex extra (cryptography) lets the proxy mint Vertex AI tokens from service accounts.
RUN pip wheel --wheel-dir /wheels ".[vertex]"

# --- runtime: no compilers, no build files, non-root ----------------------------------------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/llmkeys/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/llmkeys \
    && /opt/llmkeys/bin/pip install --no-index --find-links=/wheels "llmkeys[vertex]" \
    && groupadd --system --gid 65532 llmkeys \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llmkeys
# Numeric so Kubernetes can verify runAsNonRoot without resolving names.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["llmkeys"]
CMD ["proxy"]
