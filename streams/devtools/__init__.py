"""Development tooling: local Kafka and PostgreSQL, sample Stripe events and the demo.

Imported only by the command line, the tests and the benches."""
