"""Patterns and broadcast: every waiter bound to a matching name gets its own copy."""

import asyncio
import os
from datetime import timedelta

import adapter


async def main(prefix: str = "site1") -> list[adapter.Event | None]:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    until = timedelta(seconds=30)
    async with (
        adapter.Client(url) as client,
        # `*` matches exactly one word, `#` any number of words.
        client.expect("internal", f"{prefix}.device.*.alarm", until=until) as any_device,
        client.expect("internal", f"{prefix}.#", until=until) as anything,
        client.expect("internal", f"{prefix}.device.pump7.alarm", until=until) as pump7,
    ):
        # All three are bound: now trigger whatever sends the event.
        await client.send_custom_event(f"{prefix}.device.pump7.alarm", {"level": "high"})
        events = [await any_device, await anything, await pump7]
    for event in events:
        assert event is not None and event.properties == {"level": "high"}
    return events


if __name__ == "__main__":
    asyncio.run(main())
