"""Stream processing of Stripe events: Faust app, topics, router, family agents, handlers, CLI."""
