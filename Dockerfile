# One image for every stripe-streams command: gateway, worker, monitor, migrate and the
# operator's commands (replay, rebuild, dlq, backfill, reconcile).
FROM python:3.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md LICENSE ./
COPY streams streams
COPY ingest ingest
COPY projections projections
# A regular install: the migrations and Avro schemas ship inside the packages.
RUN pip install --no-cache-dir . && rm -rf streams ingest projections
USER nobody
# gateway, monitor, worker's /metrics and /healthz. The image has no curl: health checks use
# python -c with urllib.request.
EXPOSE 8080 8081 6066
ENTRYPOINT ["stripe-streams"]
CMD ["--help"]
