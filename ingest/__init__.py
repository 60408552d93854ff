"""The ingest side: HTTP gateway, webhook signature verification, Kafka producer, backfill."""
