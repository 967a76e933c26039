"""Tests of the hot-path detectors, their lifecycle and the HotPath engine."""
