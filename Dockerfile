# paceline: one image, run as many replicas as you like against one PostgreSQL.
FROM python:3.12-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, from the lock file, so code changes do not reinstall them.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin paceline

USER paceline

# In a container the service must listen beyond loopback; protect it at the network edge.
ENV PACELINE_HOST=0.0.0.0 \
    PACELINE_PORT=8080 \
    PACELINE_DATA_DIR=/app/.paceline
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]

# Exec form: paceline is PID 1 and receives SIGTERM itself for a graceful shutdown.
ENTRYPOINT ["paceline"]
CMD ["serve"]
