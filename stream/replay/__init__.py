"""Replay: a time range of a source, read again through the live pipeline.

ports.py says what a source must offer (a plan per partition, then its events in order);
readers/ holds one reader per source kind; job.py is a replay's own file (plan, checkpoints,
snapshots, shadow documents, breaches); run.py drives the pipeline over the readers;
shadow.py runs fresh detectors over the range; report.py writes what a replay found.
"""
