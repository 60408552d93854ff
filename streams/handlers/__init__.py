"""Pure handlers, one module per Stripe resource family, registered in :mod:`.registry`."""
