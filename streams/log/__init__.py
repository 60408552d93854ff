"""The log's vocabulary: envelopes and dead letters, the Avro codec, topic names, routing,
and what applying a consumed event did. Imports no database, HTTP or worker code."""
