"""The worker process: the Faust app, the agents, settling batches, forwarding, the transport."""
