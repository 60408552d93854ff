"""Batch jobs over the log and the dead letters: replay, rebuild and dead-letter retries.

Each job applies events with the same handlers, writer and settler as the worker's family
agents, records itself in ``ops.batch_jobs`` as it goes, shows its progress, and stops at a
batch boundary when interrupted.
"""
