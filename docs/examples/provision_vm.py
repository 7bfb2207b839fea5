"""Bind before you trigger: a service starts a job, then waits for the event the job's callback
sends. The wait is bound before the job starts, so a fast callback cannot be missed."""

import asyncio
import os
from datetime import timedelta

import adapter


async def main() -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    async with adapter.Client(url) as client:

        async def provision_vm(number: int) -> None:
            """Stands for the real job: once the VM is up, its callback reaches the daemon over
            HTTP, which publishes the external event vm.<number>.ready."""
            await client.send_custom_event(
                f"vm.{number}.ready", {"ip": "10.0.0.42"}, kind="external"
            )

        async with client.expect("external", "vm.42.ready", until=timedelta(minutes=30)) as waiter:
            await provision_vm(42)  # the callback cannot be missed: already bound
            event = await waiter
        if event is None:
            raise TimeoutError("no callback within 30 minutes")
    print(event.properties)  # {'ip': '10.0.0.42'}
    return event


if __name__ == "__main__":
    asyncio.run(main())
