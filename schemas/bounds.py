"""Number types of settings the code turns into durations, datetime offsets, sleeps, sizes or
counts: finite and within what the code can use, so a setting outside them fails at start
naming itself instead of failing at run time (a ``timedelta`` or datetime out of range, an
infinite sleep, an integer too large for SQLite or a C ``ssize_t``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field

# The longest duration a setting may give: ten years. Any event time plus or minus it stays
# within ``datetime``'s range, and a sleep or a timer of it stays within what asyncio, threads
# and SQLite's busy timeout accept.
MAX_DURATION_S = 3650 * 24 * 3600
MAX_DURATION_HOURS = 3650 * 24
MAX_DURATION_MINUTES = 3650 * 24 * 60
# The largest count or size a setting may give: a C int's, the narrowest integer these values
# reach (SDK and wire fields, ``deque(maxlen=)``, SQLite parameters).
MAX_COUNT = 2**31 - 1

Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)]
WholeSeconds = Annotated[int, Field(gt=0, le=MAX_DURATION_S)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveCount = Annotated[int, Field(gt=0, le=MAX_COUNT)]
# A value only compared with or scaled by measurements (a threshold, a factor, a bound): any
# finite value works (a huge one never fires); infinity and NaN do not compare as meant.
Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# A rate per second: at least one per MAX_DURATION_S, so the wait it gives stays finite.
Rate = Annotated[float, Field(ge=1 / MAX_DURATION_S, allow_inf_nan=False)]
Duration = Annotated[timedelta, Field(le=timedelta(seconds=MAX_DURATION_S))]
