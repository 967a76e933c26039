"""The import directions of docs/architecture.md, checked on every module of the product.

Every import counts, also the ones inside functions and under ``TYPE_CHECKING``: a wrong
direction there still couples the rooms.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "common",
    "schemas",
    "store",
    "stream",
    "alerts",
    "coldpath",
    "report",
    "evalstream",
)

# What each room may import from the others (its own modules are always allowed). ``x.ports``
# is a port module: a room may depend on another room's promises, never on its adapters.
ALLOWED: dict[str, tuple[str, ...]] = {
    "common": (),
    "schemas": ("common",),
    "store": ("common", "schemas"),
    "alerts": ("common", "schemas"),
    "stream": ("common", "schemas", "store.ports", "alerts.ports"),
    "coldpath": ("common", "schemas", "store.ports", "alerts.ports"),
    # The report reads through ports only; its own SQLite reader knows the alert topic's file
    # by its schema, not by importing alerts.sqlite_bus.
    "report": ("common", "schemas", "store.ports", "alerts.ports"),
    "evalstream": PACKAGES,
}

# The processing core of a room must not reach into its own adapters either: the composition
# root hands them in.
CORE_MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "stream": ("stream.sources", "stream.producers", "stream.replay.readers"),
    "coldpath": ("coldpath.executors",),
}
CORE_EXEMPT = (
    "stream.sources",
    "stream.producers",
    "stream.replay.readers",
    "coldpath.executors",
)

# Only adapters talk to Azure: the modules named after the service they adapt.
AZURE_ADAPTER_MARKERS = ("cosmos", "eventhubs", "servicebus", "batch", "blob", "text", "child")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = list(relative.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imports(module: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for module, path in modules():
        room = module.split(".")[0]
        for name in imports(module, path):
            target = name.split(".")[0]
            if (
                target in PACKAGES
                and target != room
                and not any(within(name, allowed) for allowed in ALLOWED[room])
            ):
                found.append(f"{module} imports {name}: {room} may import {ALLOWED[room]}")
            core_rules = CORE_MUST_NOT_IMPORT.get(room, ())
            if not any(within(module, exempt) for exempt in CORE_EXEMPT):
                found.extend(
                    f"{module} imports {name}: the core of {room} must not import its adapters"
                    for forbidden in core_rules
                    if within(name, forbidden)
                )
            if target == "azure" and room != "evalstream":
                leaf = module.rsplit(".", 1)[-1]
                if not any(marker in leaf for marker in AZURE_ADAPTER_MARKERS):
                    found.append(f"{module} imports {name}: only adapter modules import azure.*")
    return found


def test_every_import_points_the_allowed_way() -> None:
    assert violations() == []


def test_the_check_sees_a_wrong_direction(tmp_path: Path) -> None:
    # The rule itself: an adapter importing the composition root is reported.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from evalstream.settings import Settings\n"
    )
    assert list(imports("store.bad", bad)) == ["typing", "evalstream.settings"]
    assert not any(within("evalstream.settings", allowed) for allowed in ALLOWED["store"])


@pytest.mark.parametrize("room", PACKAGES)
def test_every_room_exists(room: str) -> None:
    assert (ROOT / room / "__init__.py").is_file()
