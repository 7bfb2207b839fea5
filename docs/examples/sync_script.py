"""A script without asyncio: SyncClient has the same calls, blocking."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import adapter


def main(name: str = "backup.finished") -> adapter.Event | None:
    url = os.environ.get("CUSTOMEVENT_AMQP__URL", "memory://")
    with adapter.SyncClient(url) as client, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            client.wait_custom_event_until, "internal", name, timedelta(seconds=30)
        )
        # `routed` says whether a waiter was bound: resend until the waiting thread listens.
        for _ in range(100):
            if client.send_custom_event(name, {"status": "ok", "size": "12GiB"}).routed:
                break
            time.sleep(0.05)
        event = waiting.result()
    print(event.properties if event else "deadline")
    return event


if __name__ == "__main__":
    main()
