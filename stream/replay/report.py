"""What a replay found: a JSON report (the same for an interrupted and resumed job as for an
uninterrupted one: no timings in it) and a readable table of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from common.printable import printable
from schemas import Breach, BreachState
from stream.replay.job import outcomes
from stream.replay.spec import Mode


def build(
    spec: dict[str, Any],
    counts: Counter[str],
    breaches: Sequence[Breach],
    unreadable: dict[str, str],
) -> dict[str, Any]:
    ordered = sorted(
        breaches,
        key=lambda b: (b.app_id, b.opened_at, b.breach_id, list(BreachState).index(b.state)),
    )
    # A shadow job's events are valid and invalid, not stored and quarantined: it stores none.
    accepted, rejected = outcomes(Mode(spec["mode"]).stores)
    prefix = f"{rejected}:"
    return {
        "job": spec["id"],
        "source": spec["source"],
        "window": spec["window"],
        "mode": spec["mode"],
        "detectors": spec["detectors_file"],
        "events": {
            accepted: counts.get(accepted, 0),
            rejected: counts.get(rejected, 0),
            f"{rejected}_by_code": {
                key.removeprefix(prefix): n
                for key, n in sorted(counts.items())
                if key.startswith(prefix)
            },
        },
        # Source files that could not be read (their readable part was replayed).
        "unreadable": unreadable,
        "breaches": [breach.model_dump(mode="json") for breach in ordered],
    }


def table(report: dict[str, Any]) -> Table:
    """The report's breaches, one row per breach and state."""
    count = len(report["breaches"])
    result = Table(
        title=f"replay {report['job']}: {count} breach message{'' if count == 1 else 's'}"
    )
    for column in ("app", "signal", "detector", "state", "severity", "opened (UTC)", "observed"):
        result.add_column(column, overflow="fold")
    # The breach id is in the JSON report; the table stays readable in 80 columns.
    for breach in report["breaches"]:
        # Text, not markup, with control characters escaped: a score's name is the producer's
        # ("[/]" in one made rich refuse the table, an escape sequence reached the terminal).
        result.add_row(
            *(
                Text(printable(value))
                for value in (
                    breach["app_id"],
                    breach["signal"],
                    breach["detector"],
                    breach["state"],
                    breach["severity"],
                    breach["opened_at"][:19].replace("T", " "),
                    f"{breach['observed']:.4g}",
                )
            )
        )
    return result
