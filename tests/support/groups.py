"""What the group tests share: fast retries, and taking (or not) the next delivery."""

from __future__ import annotations

import asyncio

import pytest

from adapter import Delivery, GroupSubscription

# Retries after 0.2 s, and a de-duplication window a test can run inside.
GROUPS = {"retry_initial": 0.2, "retry_max": 0.4, "dedup_window": 60.0}


async def take(sub: GroupSubscription, seconds: float = 10) -> Delivery:
    async with asyncio.timeout(seconds):
        async for delivery in sub:
            return delivery
    raise AssertionError("no delivery")


async def nothing(sub: GroupSubscription, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await take(sub, seconds)
