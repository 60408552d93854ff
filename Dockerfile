# One image for every stripe-streams command: gateway, worker, monitor, migrate, replay, dlq.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY streams streams
COPY ingest ingest
COPY projections projections
COPY schemas schemas
COPY migrations migrations
COPY scripts scripts
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT ["stripe-streams"]
CMD ["--help"]
