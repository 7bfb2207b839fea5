"""What the broker itself says, for tests that check that nothing leaks: the channels of a
connection (found by its ``connection_name``) and the queues whose names start with a prefix;
and ``rabbitmqctl`` itself."""

from __future__ import annotations

import asyncio
import os


async def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS``; its output, or AssertionError with its error."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {err.decode().strip()}")
    return out.decode()


async def connection_channels(name: str) -> int:
    """The channels the broker counts on the connection named ``name`` (0 if it has none)."""
    listing = await rabbitmqctl("list_connections", "channels", "client_properties")
    counts = [
        int(line.split("\t", 1)[0])
        for line in listing.splitlines()
        if f'"{name}"' in line and line.split("\t", 1)[0].isdigit()
    ]
    if not counts:
        raise AssertionError(f"no connection named {name!r} at the broker")
    return sum(counts)


async def queues_named(prefix: str) -> list[str]:
    """The names of the queues (in the default vhost) that start with ``prefix``."""
    listing = await rabbitmqctl("list_queues", "name")
    return [line for line in listing.splitlines() if line.startswith(prefix)]
