# One image serves every Podium service; docker-compose.yml picks the command
# (podium-gateway, podium-orchestrator, podium-agent-worker, podium-learner,
# podium migrate).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv

WORKDIR /app

# Dependencies first (cached until the lock or a pyproject changes) ...
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/orchestrator/pyproject.toml services/orchestrator/pyproject.toml
COPY services/agent-worker/pyproject.toml services/agent-worker/pyproject.toml
COPY services/learner/pyproject.toml services/learner/pyproject.toml
RUN uv sync --frozen --no-dev --no-install-workspace

# ... then the workspace's own packages.
COPY shared/ shared/
COPY services/ services/
RUN uv sync --frozen --no-dev

# Non-root runtime user. The venv and sources stay root-owned (read-only for the
# services); only /app itself is writable, e.g. for a local SQLite file when
# PODIUM_DATABASE_URL is left at its default.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin podium \
    && chown podium:podium /app

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv

USER podium

EXPOSE 8000 9101 9102 9103

CMD ["podium", "--help"]
