"""Hot-path detection: drift and SLO burn-rate detectors per (app, signal), and the breaches
they open and resolve. Pure and synchronous: the processor feeds it and persists its state."""

from stream.hotpath.engine import HotPath
from stream.hotpath.errors import SnapshotError

__all__ = ["HotPath", "SnapshotError"]
