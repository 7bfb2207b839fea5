"""Retain an event for the waits that start later: the sender does not have to know whether the
waiter is already there.

Runs on the in-process bus; set CUSTOMEVENT_AMQP__URL (amqp://guest:guest@127.0.0.1:5672/) to run
the same code on RabbitMQ, where any process or replica that waits on the name gets it.
"""

import asyncio
import os
from datetime import timedelta

import adapter


async def main(name: str = "job.done") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    async with adapter.Client(url) as client:
        # Nobody waits yet: without retain, this event would reach nobody.
        result = await client.send_custom_event(name, {"ok": "1"}, retain=timedelta(seconds=60))
        print(f"sent {result.event_id}, a waiter was bound: {result.routed}")  # False
        # A wait that starts within the minute gets it at once.
        event = await client.wait_custom_event_until("internal", name, timedelta(seconds=5))
    if event is not None:
        print(event.properties)  # {'ok': '1'}
    return event


if __name__ == "__main__":
    asyncio.run(main())
