"""Building models from values that were validated already, at the processor's event rate."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

# BaseModel's slot setters, called directly: object.__setattr__ looks each one up by name.
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# Every field of a class, filled on first use.
_all_fields: dict[type[BaseModel], set[str]] = {}


def construct_trusted(
    cls: type[M], values: dict[str, Any], private: dict[str, Any] | None = None
) -> M:
    """``cls.model_construct(**values)`` without its per-field Python loop.

    ``values`` must hold every field of ``cls`` with values of the declared types (it is taken
    as the instance's ``__dict__``, not copied); ``private`` every private attribute, if any.
    model_construct costs ~1 µs per field here;
    the enricher builds a 25-field document per event from an already validated event, so the
    loop alone would exceed the processor's whole per-event budget. tests/unit/schemas checks
    that the result equals a validated construction.

    Instances of one class share one fields-set (every field): one set fewer per model for
    the garbage collector to track, which costs more than the set itself at this rate. Sharing
    is safe for these frozen models: pydantic changes a fields-set only on a copy
    (model_copy), or by adding field names, which it holds already.
    """
    fields_set = _all_fields.get(cls)
    if fields_set is None:
        fields_set = _all_fields[cls] = set(cls.model_fields)
    model: M = _new(cls)
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, private)
    return model
