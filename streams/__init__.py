"""Stream processing of Stripe events: the log's vocabulary (log), pure handlers (handlers),
the worker process (worker), the command line (cli) and development tooling (devtools)."""
