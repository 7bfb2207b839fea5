"""Correlate: wait for the event that is yours (``match``), and take only the events a worker is
for (``filters``).

Runs on the in-process bus; set CUSTOMEVENT_AMQP__URL (amqp://guest:guest@127.0.0.1:5672/) to run
the same code on RabbitMQ.
"""

import asyncio
import os
from datetime import timedelta

import adapter


async def main(name: str = "vm.created") -> dict[str, str]:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    group = "example-" + name.replace(".", "-")[-60:]
    async with adapter.Client(url) as client:
        # Many workflows wait on the same name; each is answered by its own VM's event only.
        mine = {"vm": "web-01"}
        async with client.expect("internal", name, until=timedelta(seconds=30), match=mine) as w:
            other = await client.send_custom_event(name, {"vm": "web-02", "env": "dev"})
            print(other.outcome)  # routed: the wait is bound to the name, but web-02 is not its own
            await client.send_custom_event(name, {"vm": "web-01", "env": "prod"})
            event = await w
        assert event is not None
        print(event.properties, "after", w.unmatched, "that were not mine")  # after 1

        # A worker for production web and database VMs; the rest are acknowledged unhandled.
        filters = [
            {"exact": {"env": "prod"}},
            {"any": [{"prefix": {"vm": "web-"}}, {"prefix": {"vm": "db-"}}]},
        ]
        async with client.subscribe(name, group=group, filters=filters) as deliveries:
            await client.send_custom_event(name, {"vm": "web-03", "env": "dev"})
            await client.send_custom_event(name, {"vm": "web-04", "env": "prod"})
            async for delivery in deliveries:
                await delivery.ack()
                print("started work for", delivery.event.properties["vm"])  # web-04 only
                break
    return {"matched": event.properties["vm"], "filtered": delivery.event.properties["vm"]}


if __name__ == "__main__":
    asyncio.run(main())
