# One image for every stripe-streams command: gateway, worker, migrate.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md LICENSE ./
COPY streams streams
COPY ingest ingest
COPY projections projections
# A regular install: the migrations and Avro schemas ship inside the packages.
RUN pip install --no-cache-dir . && rm -rf streams ingest projections
USER nobody
ENTRYPOINT ["stripe-streams"]
CMD ["--help"]
