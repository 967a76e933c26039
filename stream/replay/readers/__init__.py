"""One ReplayReader per source kind: the embedded log, NDJSON files, Event Hubs, Capture."""
