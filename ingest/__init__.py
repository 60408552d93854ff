"""The ingest side: the HTTP gateway, webhook signature verification, the Kafka producer, and
the supervisor of the gateway's processes."""
