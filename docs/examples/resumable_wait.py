"""A resumable wait: a waiter that went away gets, on its return, what was sent meanwhile."""

import asyncio
import os
from datetime import UTC, datetime, timedelta

import adapter


class WaiterCrashed(Exception):
    pass


async def main(name: str = "backup.nightly.finished") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    wait_id = f"waiter-{name}"  # stable across restarts of the waiting process
    deadline = datetime.now(UTC) + timedelta(minutes=10)
    async with adapter.Client(url) as client:
        try:
            async with client.expect("internal", name, until=deadline, wait_id=wait_id):
                raise WaiterCrashed  # the waiter leaves before the event arrives
        except WaiterCrashed:
            pass
        result = await client.send_custom_event(name, {"status": "ok"})
        assert result.routed  # kept for the absent waiter
        # Back again with the same wait_id and deadline: the event is there.
        event = await client.wait_custom_event_until("internal", name, deadline, wait_id=wait_id)
    print(event.properties if event else "deadline")
    return event


if __name__ == "__main__":
    asyncio.run(main())
