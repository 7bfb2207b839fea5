"""The library internals the code leans on, checked against the installed versions.

Four seams are not public API: paho-mqtt's ``_sock_recv``/``_sock_send``
(adapter/_mqtt/_driver.py), aio-pika's ``RobustConnection._on_connection_close`` and
``_close_called`` (adapter/_bus/_failover.py), uvicorn's httptools protocol
(adapter/_http/_protocol.py), and aiormq's confirm bookkeeping of a channel
(adapter/_bus/amqp/_batching.py). Argparse's internals are no longer used (adapter/_cli.py keeps the
action ``add_subparsers`` returns). Each of those libraries is capped below its next major in
pyproject.toml; within the cap, a release that renames a seam fails here rather than in production.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

# distribution -> (the module that leans on it, the cap it must carry)
LEANED_ON = {
    "paho-mqtt": "adapter/_mqtt/_driver.py",
    "aio-pika": "adapter/_bus/_failover.py",
    "uvicorn": "adapter/_http/_protocol.py",
    "aiormq": "adapter/_bus/amqp/_batching.py",
}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(line) for line in project["dependencies"]]
    return {requirement.name: requirement for requirement in found}


@pytest.mark.parametrize("distribution", sorted(LEANED_ON))
def test_a_library_whose_internals_are_used_is_capped_and_the_installed_one_fits(
    distribution: str,
) -> None:
    requirement = _requirements()[distribution]
    caps = [spec for spec in requirement.specifier if spec.operator in ("<", "<=")]
    assert caps, f"{distribution}: {LEANED_ON[distribution]} uses its internals; cap it"
    assert requirement.specifier.contains(version(distribution), prereleases=True)


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_paho_still_reads_and_writes_through_its_socket_seam() -> None:
    import paho.mqtt.client as mqtt

    assert _parameters(mqtt.Client._sock_recv) == ["self", "bufsize"]
    assert _parameters(mqtt.Client._sock_send) == ["self", "buf"]
    # Every read and write goes through the seam: the socket's recv and send are called there only.
    whole = inspect.getsource(mqtt.Client)
    seams = ((mqtt.Client._sock_recv, "._sock.recv("), (mqtt.Client._sock_send, "._sock.send("))
    for seam, call in seams:
        assert whole.count(call) == inspect.getsource(seam).count(call) > 0, call


def test_aio_pika_still_reports_a_lost_connection_through_its_hook() -> None:
    from aio_pika import RobustConnection

    assert _parameters(RobustConnection._on_connection_close) == ["self", "closing"]
    assert inspect.iscoroutinefunction(RobustConnection._on_connection_close)
    assert "_close_called" in inspect.getsource(RobustConnection.__init__) or any(
        "_close_called" in inspect.getsource(base.__init__)
        for base in RobustConnection.__mro__[1:]
        if base.__module__.startswith("aio_pika")
    )


def test_aio_pika_still_reopens_a_channel_with_callbacks_and_aiormq_reports_cancels() -> None:
    # adapter/_bus/amqp/_waits.py watches each wait channel for a consumer the broker cancelled
    # (its queue deleted) through these two, re-added on every reopen.
    from aio_pika import RobustChannel
    from aiormq import Channel

    assert "reopen_callbacks" in inspect.getsource(RobustChannel.__init__)
    assert "self.reopen_callbacks()" in inspect.getsource(RobustChannel.reopen)
    assert "on_consumer_cancel_callbacks" in inspect.getsource(Channel.__init__)
    assert "on_consumer_cancel_callbacks" in inspect.getsource(Channel._on_cancel_frame)


def test_uvicorn_still_has_the_httptools_hooks_the_bounded_protocol_overrides() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from adapter._http._protocol import bounded_protocol
    from adapter._settings import HttpSettings

    ours = bounded_protocol(HttpSettings())
    own = [cls for cls in ours.__mro__ if cls.__module__.startswith("adapter.")]
    overridden = [
        name
        for cls in own
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("__") and hasattr(HttpToolsProtocol, name)
    ]
    assert {"data_received", "on_headers_complete", "_start_asgi_task"} <= set(overridden)
    for name in overridden:
        theirs = getattr(HttpToolsProtocol, name)
        assert _parameters(getattr(ours, name)) == _parameters(theirs), name


def test_aiormq_still_keeps_a_channels_confirms_where_the_batcher_registers_them() -> None:
    from aiormq import Channel
    from aiormq.abc import ChannelFrame

    # The batcher registers each message as basic_publish does; aiormq's readers settle it.
    publish = inspect.getsource(Channel.basic_publish)
    for line in (
        "async with self.lock:",
        "self.delivery_tag += 1",
        "self.confirmations[delivery_tag] = confirmation",
        "self.message_id_delivery_tag[message_id] = delivery_tag",
        "await self.write_queue.put(",
    ):
        assert line in publish, line
    assert "self.message_id_delivery_tag.get(message_id)" in inspect.getsource(
        Channel._on_return_frame
    )
    assert "self.confirmations" in inspect.getsource(Channel._on_confirm_frame)
    assert "self.max_content_size" in inspect.getsource(Channel.__init__)
    assert [field.name for field in dataclasses.fields(ChannelFrame)] == [
        "payload",
        "should_close",
        "drain_future",
    ]
