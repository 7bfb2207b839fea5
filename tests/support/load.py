"""A steady HTTP send load for the fault and cluster tests, and the check that it lost nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Load:
    """A steady HTTP send load: each send carries its own event id; statuses are kept per id."""

    url: str
    name: str
    workers: int = 8
    pause: float = 0.01
    statuses: dict[str, int | str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    async def worker(self, number: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as http:
            sequence = 0
            while not self.stop.is_set():
                event_id = f"{self.run}-{number}-{sequence}"
                sequence += 1
                try:
                    response = await http.post(
                        f"/api/v1/events/{self.name}",
                        json={"properties": {"n": event_id}, "event_id": event_id},
                    )
                    self.statuses[event_id] = response.status_code
                except httpx.HTTPError as exc:
                    self.statuses[event_id] = type(exc).__name__
                    await asyncio.sleep(0.05)
                await asyncio.sleep(self.pause)

    @property
    def accepted(self) -> set[str]:
        return {k for k, v in self.statuses.items() if v == 202}

    def count(self) -> Counter[int | str]:
        return Counter(self.statuses.values())


async def run_load(load: Load) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(load.worker(i)) for i in range(load.workers)]
    try:
        yield
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)


def check_nothing_lost(load: Load, delivered: Counter[str]) -> dict[str, int]:
    accepted = load.accepted
    lost = accepted - set(delivered)
    assert not lost, (
        f"{len(lost)} sends answered 202 never reached the consumer: {sorted(lost)[:5]}"
    )
    statuses = load.count()
    unexpected = {k: v for k, v in statuses.items() if k not in (202, 503)}
    return {
        "sent": len(load.statuses),
        "accepted": len(accepted),
        "refused_503": statuses.get(503, 0),
        "other": sum(unexpected.values()),
        "lost": len(lost),
        "duplicated": sum(c - 1 for c in delivered.values() if c > 1),
        "refused_but_delivered": len(
            {k for k, v in load.statuses.items() if v != 202} & set(delivered)
        ),
    }
