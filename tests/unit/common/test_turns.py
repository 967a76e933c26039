"""Turns: a loop whose awaits never wait still lets the event loop run, once per turn."""

from __future__ import annotations

import asyncio

from common.turns import Turns


async def steps_before_a_callback_runs(turns: Turns, steps: int) -> int | None:
    """Take ``steps`` steps that never wait; the step after which a callback asked for before
    the first one ran (None: not within them)."""
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    for step in range(1, steps + 1):
        await turns.take()
        if ran:
            return step
    return None


async def test_a_turn_is_given_once_its_time_has_passed() -> None:
    assert await steps_before_a_callback_runs(Turns(0.0), 5) == 1


async def test_no_turn_is_given_before_its_time() -> None:
    assert await steps_before_a_callback_runs(Turns(3600.0), 5) is None
