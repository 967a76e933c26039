"""The one place that touches ``azure.ai.evaluation``: building evaluators, calling them, and
turning what they raise into a short failure reason.

The SDK is imported on first use, not at import time: importing it costs ~4 s (pandas, nltk,
openai), which every process that loads the metric catalogue would otherwise pay.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

EvaluatorCall = Callable[..., Awaitable[Mapping[str, Any]]]


class SdkUnavailable(Exception):
    """The SDK could not be imported or refused the evaluator's configuration."""


def make_evaluator(class_name: str, *args: Any, **kwargs: Any) -> EvaluatorCall:
    """An evaluator of ``azure.ai.evaluation`` by class name, as an async callable.

    Evaluators' public ``__call__`` runs a fresh event loop per row (~0.4 ms of overhead per
    call, measured); their async twin (``_to_async()``, what the SDK's own batch ``evaluate``
    uses) costs ~0.05 ms and lets judge calls of one window share a loop. The pinned SDK
    version has it; should it disappear, the public call runs in a worker thread instead.
    """
    try:
        import azure.ai.evaluation as sdk  # lazy on purpose, see module doc

        evaluator = getattr(sdk, class_name)(*args, **kwargs)
    except Exception as exc:  # the SDK raises its own and builtin types alike
        raise SdkUnavailable(f"azure-ai-evaluation: {class_name}: {describe(exc)}") from exc
    to_async = getattr(evaluator, "_to_async", None)
    if callable(to_async):
        async_call: EvaluatorCall = to_async()
        return async_call

    async def threaded(**inputs: Any) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await asyncio.to_thread(lambda: evaluator(**inputs))
        return result

    return threaded


def rouge_type(name: str) -> Any:
    """The SDK's ``RougeType`` member whose value is ``name`` (``"rougeL"``, ``"rouge1"``...)."""
    try:
        from azure.ai.evaluation import RougeType  # lazy, see module doc
    except Exception as exc:
        raise SdkUnavailable(f"azure-ai-evaluation: {describe(exc)}") from exc
    return RougeType(name)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code (``Accumulator.add``/``finish``).

    When the caller's thread already runs an event loop (an async runner calling a sync
    accumulator), the coroutine gets its own loop in a worker thread; blocking the caller is
    what a sync ``finish`` means anyway.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-evaluators") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def score(result: Mapping[str, Any], key: str) -> float:
    """The evaluator's numeric result at ``key`` (``"a.b"`` reads ``result["a"]["b"]``); raises
    ``MalformedAnswer`` when absent or not a number (the SDK turns a judge answer without a
    score into NaN, not an error)."""
    value: Any = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise MalformedAnswer(f"no numeric {key!r} in the evaluator's result")
    return float(value)


def tokens_used(result: Mapping[str, Any], key: str) -> int:
    """Total judge tokens the evaluator reported for one call (0 when it did not say)."""
    properties = result.get(f"{key}_properties")
    if isinstance(properties, Mapping):
        total = properties.get("total_tokens")
        if isinstance(total, int) and not isinstance(total, bool):
            return total
    return 0


class MalformedAnswer(Exception):
    """The judge answered, but not with a score the evaluator could read."""


def describe(exc: BaseException) -> str:
    """A short, stable reason for a failed evaluator call, from the exception chain.

    Reasons are grouped by kind (they are counted per window), so they carry no per-call
    detail such as request ids.
    """
    for cause in _chain(exc):
        if isinstance(cause, TimeoutError):
            return "timeout"
        if isinstance(cause, MalformedAnswer | json.JSONDecodeError):
            return "malformed judge answer"
        status = getattr(cause, "status_code", None)
        if isinstance(status, int):
            if status == 429:
                return "throttled (HTTP 429) after retries"
            return f"judge returned HTTP {status}"
        if type(cause).__name__ in ("APITimeoutError", "APIConnectionError"):
            return f"judge unreachable ({type(cause).__name__})"
    # The SDK's own errors carry a message fit for users; keep its first line.
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}"[:200] if message else type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
