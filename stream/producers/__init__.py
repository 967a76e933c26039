"""Producers that append events to a source: HTTP ingest and the simulator."""
