"""The bits of OData the Batch list operations use: ``$filter`` (eq/ne, and/or), ``$select``."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.emulators.batch.errors import BatchServiceError

Entity = dict[str, object]

_CLAUSE = re.compile(
    r"\s*(?P<path>[A-Za-z][\w/]*)\s+(?P<op>eq|ne)\s+(?:'(?P<text>(?:[^']|'')*)'|(?P<num>-?\d+(?:\.\d+)?)|(?P<bool>true|false))\s*",
    re.IGNORECASE,
)


def _lookup(entity: Entity, path: str) -> object:
    value: object = entity
    for part in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _invalid(expression: str) -> BatchServiceError:
    return BatchServiceError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        {"QueryParameterName": "$filter", "QueryParameterValue": expression},
    )


def compile_filter(expression: str | None) -> Callable[[Entity], bool]:
    """A predicate for a ``$filter`` made of ``path eq|ne literal`` joined by and/or.

    Evaluated left to right with `and` binding tighter than `or`; parentheses are not supported.
    """
    if not expression or not expression.strip():
        return lambda _entity: True
    alternatives: list[list[tuple[str, str, object]]] = []
    for alternative in re.split(r"\s+or\s+", expression.strip(), flags=re.IGNORECASE):
        clauses: list[tuple[str, str, object]] = []
        for clause in re.split(r"\s+and\s+", alternative, flags=re.IGNORECASE):
            match = _CLAUSE.fullmatch(clause)
            if match is None:
                raise _invalid(expression)
            literal: object
            if match.group("text") is not None:
                literal = match.group("text").replace("''", "'")
            elif match.group("num") is not None:
                literal = float(match.group("num"))
            else:
                literal = match.group("bool").lower() == "true"
            clauses.append((match.group("path"), match.group("op").lower(), literal))
        alternatives.append(clauses)

    def matches(entity: Entity) -> bool:
        for clauses in alternatives:
            ok = True
            for path, op, literal in clauses:
                value = _lookup(entity, path)
                if isinstance(literal, float) and isinstance(value, int | float):
                    equal = float(value) == literal
                elif isinstance(literal, str) and isinstance(value, str):
                    equal = value.lower() == literal.lower()
                else:
                    equal = value == literal
                if equal != (op == "eq"):
                    ok = False
                    break
            if ok:
                return True
        return False

    return matches


def select(entity: Entity, clause: str | None) -> Entity:
    """Keep only the top-level properties a ``$select`` names."""
    if not clause:
        return entity
    wanted = {name.strip().split("/")[0] for name in clause.split(",") if name.strip()}
    return {k: v for k, v in entity.items() if k in wanted}
