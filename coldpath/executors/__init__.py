"""Executors: where a manifest's shard tasks run (locally here; Azure Batch later)."""
