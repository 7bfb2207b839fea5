"""Quick start: bind a wait, send an event, receive it.

Runs on the in-process bus; set CUSTOMEVENT_AMQP__URL (amqp://guest:guest@127.0.0.1:5672/) to run
the same code on RabbitMQ.
"""

import asyncio
import os
from datetime import timedelta

import adapter


async def main(name: str = "demo.hello") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    async with (
        adapter.Client(url) as client,
        # Bind the wait first, then send: the event cannot slip past.
        client.expect("internal", name, until=timedelta(seconds=30)) as waiter,
    ):
        result = await client.send_custom_event(name, {"answer": "42"})
        print(f"sent {result.event_id}, a waiter was bound: {result.routed}")
        event = await waiter  # None at the deadline, as vRO returns null
    if event is not None:
        print(event.properties)  # {'answer': '42'}
    return event


if __name__ == "__main__":
    asyncio.run(main())
