"""A service with no AMQP access waits, and sends, through the bridge daemon: Client("http://...").

Runs as it is against the quick start's daemon (`make serve`), whose demo principal is ops with
the password s3cret. Only external events travel through a daemon.
"""

import asyncio
from datetime import timedelta

import adapter


async def main(
    name: str = "vm.created", daemon_url: str = "http://ops:s3cret@127.0.0.1:8280"
) -> adapter.Event | None:
    async with (
        adapter.Client(daemon_url) as client,
        # Bound at the daemon once entered: whatever sends the event now (curl, a SOAP client,
        # a device, this client) cannot slip past.
        client.expect("external", name, until=timedelta(seconds=30)) as waiter,
    ):
        result = await client.send_custom_event(name, {"vm": "web-01"}, kind="external")
        print(f"sent {result.event_id}, a waiter was bound: {result.routed}")
        event = await waiter  # None at the deadline
    if event is not None:
        print(event.properties, "sent by", event.principal)  # {'vm': 'web-01'} sent by ops
    return event


if __name__ == "__main__":
    asyncio.run(main())
