"""The cold path: evaluation policies over stored time windows, sharded and idempotent."""
