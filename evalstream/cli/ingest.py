"""``ingest-key``: make an API key for HTTP ingest and print the setting that admits it."""

from __future__ import annotations

import secrets
import shlex
from typing import Annotated

import orjson
import typer

from evalstream.cli.options import fail
from stream.producers.ingest_auth import ALL_APPS, allowed_apps, hash_key


def ingest_key(
    name: Annotated[str, typer.Argument(help="A name for the key's holder, shown in errors.")],
    app: Annotated[
        list[str] | None,
        typer.Option("--app", help="An app_id the key may post for (repeat); default: every app."),
    ] = None,
    events_per_s: Annotated[
        float | None,
        typer.Option(help="Events per second per app before 429 (default: no limit).", min=0.001),
    ] = None,
    burst: Annotated[int, typer.Option(help="Events per app allowed at once.", min=1)] = 1000,
) -> None:
    """Make a new random API key for POST /api/telemetry.

    Prints the key once (give it to the sender; it is not stored) and the TOML entry to add under
    \\[ingest.auth], which holds only the key's SHA-256, plus the same entry as JSON for
    EVALSTREAM_INGEST__AUTH__API_KEYS. Senders present it as `Authorization: Bearer KEY`.
    """
    if not name.strip():
        # It names the key in the errors senders get: an empty one names nobody.
        raise fail("NAME: the key's holder needs a name (it is shown in errors)")
    try:
        apps = allowed_apps(tuple(app or [ALL_APPS]))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--app") from None
    key = secrets.token_urlsafe(32)
    entry: dict[str, object] = {
        "name": name,
        "key_sha256": hash_key(key),
        "apps": list(apps),
        "burst": burst,
    }
    if events_per_s is not None:
        entry["events_per_s"] = events_per_s
    typer.echo(f"key (shown once): {key}\n")
    typer.echo("[[ingest.auth.api_keys]]")
    for field, value in entry.items():
        typer.echo(f"{field} = {orjson.dumps(value).decode()}")
    # Quoted for a shell whatever the name holds (a quote, a $).
    typer.echo(f"\nEVALSTREAM_INGEST__AUTH__API_KEYS={shlex.quote(orjson.dumps([entry]).decode())}")
