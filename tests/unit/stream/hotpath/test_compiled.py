"""The hot path as it runs (compiled by setup.py) computes what its Python source does."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import orjson

from schemas.appconfig import AppDirectory
from stream.hotpath import HotPath

from .test_engine import incident_stream

ROOT = Path(__file__).resolve().parents[4]
# Snapshots compared along the way, not only at the end: a difference in a detector's state
# that has not changed a breach yet shows there.
SNAPSHOT_EVERY = 3000


def compiled_modules() -> list[str]:
    """setup.py's COMPILED list, as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED list")


def run_stream() -> dict[str, list[object]]:
    """Breaches (with the index of the document that gave them) and snapshots of the engine
    over the incident stream, as JSON-ready values. The plain-Python run below executes this
    same function in a process where the hot path's modules load from their sources."""
    engine = HotPath(AppDirectory())
    breaches: list[object] = []
    snapshots: list[object] = []
    for n, doc in enumerate(incident_stream()):
        for breach in engine.observe(doc):
            breaches.append([n, breach.model_dump(mode="json")])
        if n % SNAPSHOT_EVERY == SNAPSHOT_EVERY - 1:
            snapshots.append(engine.snapshot().decode())
    snapshots.append(engine.snapshot().decode())
    return {"breaches": breaches, "snapshots": snapshots}


# Run in a child process: loads stream.hotpath.* from their .py files (never an extension
# module), then prints run_stream()'s result.
PLAIN = """
import importlib.abc, importlib.util, sys
from pathlib import Path

class Source(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if not name.startswith("stream.hotpath.") or not path:
            return None
        source = Path(path[0]) / (name.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(name, source) if source.exists() else None

sys.meta_path.insert(0, Source())
import orjson
import stream.hotpath.engine
assert stream.hotpath.engine.__file__.endswith(".py"), stream.hotpath.engine.__file__
from tests.unit.stream.hotpath.test_compiled import run_stream
sys.stdout.buffer.write(orjson.dumps(run_stream()))
"""


def test_the_hot_path_runs_compiled() -> None:
    """What ships is what the tests test: setup.py compiled every listed module (unless the
    install was asked for plain Python with COMPILE_HOTPATH=0)."""
    expected = ".py" if os.environ.get("COMPILE_HOTPATH") == "0" else ".so"
    modules = compiled_modules()
    assert "stream.hotpath.engine" in modules
    for name in modules:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(expected), (
            f"{name} loads from {module.__file__}: run `make install` (setup.py compiles it)"
        )


def test_compiled_and_plain_python_give_the_same_breaches_and_snapshots() -> None:
    compiled = run_stream()
    plain = orjson.loads(
        subprocess.run(
            [sys.executable, "-c", PLAIN],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=240,
        ).stdout
    )
    # The stream has breaches of every kind it exercises (not a comparison of two silences).
    kinds = {breach["kind"] for _, breach in compiled["breaches"]}  # type: ignore[index]
    assert {"drift", "latency", "error_rate"} <= kinds, kinds
    assert len(compiled["snapshots"]) == len(incident_stream()) // SNAPSHOT_EVERY + 1
    assert plain["breaches"] == compiled["breaches"]
    assert plain["snapshots"] == compiled["snapshots"]
