"""Builds the hot path's detectors as C extensions with mypyc (everything else is pyproject.toml).

The detectors are the processor's per-event arithmetic: about eighteen updates per event, a
fifth of its CPU as plain Python. Compiled from the same type-checked sources, ``HotPath.observe``
costs about half as much (bench/results/detectors_cost.md, bench/NOTES.md); what it computes does
not change (tests/unit/stream/hotpath/test_compiled.py runs the same stream through both
builds). Where no C compiler or Python headers exist the build says so and installs the same
modules as plain Python: slower, otherwise the same. ``COMPILE_HOTPATH=0`` asks for that plain
build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Modules compiled together (mypyc links them into one shared library); what they import from
# elsewhere (schemas, river, scipy, the standard library) stays an ordinary Python import.
COMPILED = [
    "stream/hotpath/adwin.py",
    "stream/hotpath/burn_rate.py",
    "stream/hotpath/detector.py",
    "stream/hotpath/engine.py",
    "stream/hotpath/incident.py",
    "stream/hotpath/ks.py",
    "stream/hotpath/lifecycle.py",
    "stream/hotpath/packing.py",
    "stream/hotpath/page_hinkley.py",
    "stream/hotpath/scale.py",
    "stream/hotpath/tail.py",
]


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the plain modules when compiling fails.

    All or nothing: the modules' thin extensions load one shared library, so a build that
    fails halfway removes what it made rather than leave extensions that cannot load."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: any of several types
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            print(
                f"warning: the hot path is installed as plain Python, not compiled ({exc})",
                file=sys.stderr,
            )


def extensions() -> list[object]:
    if os.environ.get("COMPILE_HOTPATH", "1") == "0":
        return []
    from mypyc.build import mypycify

    # Not pyproject's [tool.mypy]: its pydantic plugin is not installed where pip builds. The
    # modules' imports outside the list are typed Any here, which compiles to plain Python calls.
    options = ["--config-file", os.devnull, "--ignore-missing-imports"]
    return list(mypycify([*options, *COMPILED], opt_level="3", group_name="evalstream_hotpath"))


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
