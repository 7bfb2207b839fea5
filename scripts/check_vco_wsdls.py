"""CI's check against real vCenter Orchestrator WSDLs, when CI has them (the repo does not ship
them): for each WSDL given, a zeep client built from it, with its address pointed at a running
bridge daemon, sends a custom event that a waiter receives.

    .venv/bin/python scripts/check_vco_wsdls.py path/to/vmo.wsdl [...]

Exits 0 when every WSDL worked, 1 naming the ones that did not.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import zeep

from adapter import Client
from adapter.testing import BridgeDaemon

SERVICE = "VSOWebControlService"
BINDING = "{http://webservice.vso.dunes.ch}WebService"


async def check(wsdl: Path, daemon: BridgeDaemon) -> str | None:
    """None when a client built from ``wsdl`` delivered an event; else what went wrong."""
    name = f"ci.wsdl.{uuid.uuid4().hex[:12]}"
    client = zeep.Client(str(wsdl))
    if SERVICE not in client.wsdl.services:
        return f"no service {SERVICE} in it"
    service = client.create_service(BINDING, f"{daemon.url}/vmware-vmo-webcontrol/webservice")
    async with (
        Client(daemon.url) as waiter_side,
        waiter_side.expect("external", name, until=timedelta(seconds=30)) as waiter,
    ):
        await asyncio.to_thread(
            service.sendCustomEvent, eventName=name, serializedProperties="a=1\nb=two words"
        )
        event = await waiter
    if event is None:
        return "the waiter received nothing"
    if event.properties != {"a": "1", "b": "two words"} or event.source != "soap":
        return f"the waiter received {event.to_json()}"
    return None


async def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 64
    failed = 0
    with BridgeDaemon() as daemon:  # the in-process bus, anonymous sending: as `make serve`
        for path in map(Path, paths):
            try:
                problem = await check(path, daemon)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            print(
                f"{'ok  ' if problem is None else 'FAIL'}  {path.name}"
                + (f": {problem}" if problem else "")
            )
            failed += problem is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
