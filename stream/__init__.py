"""The processor: event sources, pipeline, enrichment, hot-path detectors, replay."""
