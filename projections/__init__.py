"""PostgreSQL writers, mirror and monitoring tables, migrations, metrics and the monitor API."""
