"""A worker in a group: every event of the group is handled by one of its workers, at least once.

Runs on the in-process bus; set CUSTOMEVENT_AMQP__URL (amqp://guest:guest@127.0.0.1:5672/) to run
the same code on RabbitMQ, where the group is a durable queue that outlives the worker.
"""

import asyncio
import os

import adapter


async def reload_plugins(properties: dict[str, str]) -> None:
    """The work an event starts (here: nothing but a pause)."""
    await asyncio.sleep(0.01)


async def main(name: str = "vm.created") -> list[str]:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    group = "example-" + name.replace(".", "-")[-60:]
    handled: list[str] = []
    async with (
        adapter.Client(url) as client,
        client.subscribe(name, group=group) as deliveries,  # joins (and makes) the group
    ):
        for vm in ("web-1", "web-2"):
            await client.send_custom_event(name, {"vm": vm})
        async for delivery in deliveries:
            try:
                await reload_plugins(delivery.event.properties)
            except Exception as exc:
                await delivery.retry(str(exc))  # again after a backoff; dead letter at the end
                continue
            await delivery.ack()  # handled: not delivered again
            handled.append(delivery.event.properties["vm"])
            if len(handled) == 2:
                break
    print(handled)  # ['web-1', 'web-2']
    return handled


if __name__ == "__main__":
    asyncio.run(main())
