"""The monitoring API (``stripe-streams monitor``): read-only JSON over the ops tables and Kafka."""
