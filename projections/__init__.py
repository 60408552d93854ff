"""The PostgreSQL side: the batch plan (pure), the writer and the dead-letter store (SQL), the
store a worker uses, migrations shipped in sql/, and the worker's metrics."""
