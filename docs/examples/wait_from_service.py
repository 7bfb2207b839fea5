"""A service waits for an approval until a deadline, while another task sends it.

In real life the sender is another service, a vRO-era client, a device or `customevent send`.
"""

import asyncio
import os
from datetime import UTC, datetime, timedelta

import adapter


async def approve_later(client: adapter.Client, name: str) -> None:
    await asyncio.sleep(0.2)  # someone takes a moment to decide
    await client.send_custom_event(name, "approved=yes\napprover=ops")  # serializedProperties


async def main(name: str = "change.4711.approval") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    deadline = datetime.now(UTC) + timedelta(minutes=5)  # an aware datetime, or a timedelta
    async with adapter.Client(url) as client, asyncio.TaskGroup() as tasks:
        async with client.expect("internal", name, until=deadline) as waiter:
            tasks.create_task(approve_later(client, name))
            event = await waiter
        if event is None:
            print("no decision before the deadline")
        else:
            print(f"{event.properties['approved']} by {event.properties['approver']}")
        # Nothing sent: the wait returns None at its deadline.
        silence = await client.wait_custom_event_until(
            "internal", name, timedelta(milliseconds=300)
        )
        assert silence is None
    return event


if __name__ == "__main__":
    asyncio.run(main())
