"""``amqp.url`` with several nodes: how it is written (comma-separated, a TOML list, the
environment), what is refused and how the refusal reads (never with a password), the order the
client tries the nodes in, and separate credentials. Broker-free except where marked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from adapter import BusUnavailable, Client, ConfigurationError, load_settings
from adapter._bus._failover import Nodes
from adapter._mqtt._testing import free_port
from adapter._nodes import redact_url, split_nodes

A = "amqp://u:s3cret@rabbit-a:5672/"
B = "amqp://u:s3cret@rabbit-b:5672/"


def test_nodes_are_comma_separated_with_optional_spaces() -> None:
    assert split_nodes(f"{A}, {B}") == [A, B]
    assert split_nodes(A) == [A]


def test_a_toml_list_is_the_same_as_commas(tmp_path: Path) -> None:
    config = tmp_path / "customevent.toml"
    config.write_text(f'[amqp]\nurl = ["{A}", "{B}"]\n')
    assert load_settings(config).amqp.url == f"{A},{B}"


def test_the_environment_takes_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMEVENT_AMQP__URL", f"{A},{B}")
    assert split_nodes(load_settings().amqp.url or "") == [A, B]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"{A},", "has an empty entry"),
        (f"{A},,{B}", "has an empty entry"),
        (f"{A},http://rabbit-b/", "node 2 must look like amqp://"),
        (
            f"{A},amqps://u:s3cret@rabbit-b:5671/",
            "node 2 (amqps://u:***@rabbit-b:5671/) differs from node 1",
        ),
        (f"{A},amqp://u:0ther-pw@rabbit-b/", "in its user or password"),
        (f"{A},amqp://rabbit-b/", "in its user or password"),
        (f"{A},amqp://u:s3cret@rabbit-b/events", "in its virtual host"),
        (f"{A},amqp://u:s3cret@rabbit-b/?heartbeat=5", "in its options"),
        (f"{A},{A}", "node 2 repeats node 1"),
        ("amqp://u:pa,ss@rabbit-a/", "a comma inside a password is written %2C"),
    ],
)
def test_bad_node_lists_are_refused_by_position_without_passwords(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"amqp\.url") as refused:
        load_settings(amqp={"url": url})
    text = str(refused.value)
    assert message in text
    for secret in ("s3cret", "0ther-pw", "pa,ss", "ss@"):
        assert secret not in text


def test_the_same_virtual_host_may_be_written_either_way() -> None:
    assert len(split_nodes("amqp://a/,amqp://b,amqp://c/%2F")) == 3


def test_redact_url_hides_every_password_of_a_list() -> None:
    assert redact_url(f"{A},{B}") == "amqp://u:***@rabbit-a:5672/,amqp://u:***@rabbit-b:5672/"
    # A piece that is no URL may be part of a password: none of it is shown.
    assert redact_url("amqp://u:pa,ss@rabbit-a/") == "***,***"


def test_a_password_needs_a_user() -> None:
    with pytest.raises(ConfigurationError, match=r"amqp\.password needs a user"):
        load_settings(amqp={"url": "amqp://rabbit-a/", "password": "p"})
    load_settings(amqp={"url": "amqp://rabbit-a/", "username": "u", "password": "p"})


def test_username_and_password_replace_those_of_every_node() -> None:
    settings = load_settings(
        amqp={"url": f"{A},{B}", "username": "bridge", "password": "p@ss:w/rd,%"}
    ).amqp
    urls = list(Nodes.from_settings(settings))
    assert {(u.user, u.password) for u in urls} == {("bridge", "p@ss:w/rd,%")}
    assert {u.host for u in urls} == {"rabbit-a", "rabbit-b"}
    assert "p@ss" not in repr(settings)  # a SecretStr


def test_each_process_shuffles_the_nodes_then_goes_round_them() -> None:
    urls = [f"amqp://rabbit-{n}/" for n in range(3)]
    settings = load_settings(amqp={"url": ",".join(urls)}).amqp
    firsts: Counter[str] = Counter()
    for _ in range(300):
        nodes = Nodes.from_settings(settings)
        first = nodes.current
        firsts[str(first)] += 1
        seen = [str(first), str(nodes.advance()), str(nodes.advance())]
        assert sorted(seen) == sorted(urls)
        assert nodes.advance() == first
    # Replicas with the same list start spread over the nodes, not all on the first.
    assert set(firsts) == set(urls) and min(firsts.values()) > 50


async def test_no_node_answering_names_every_node_without_its_password() -> None:
    down = [f"amqp://u:s3cret@127.0.0.1:{free_port()}/" for _ in range(2)]
    settings = load_settings(amqp={"url": ",".join(down), "connect_attempts": 1})
    with pytest.raises(BusUnavailable) as refused:
        async with Client(settings):
            pass
    text = str(refused.value)
    assert "s3cret" not in text
    for url in down:
        assert redact_url(url) in text


@pytest.mark.rabbitmq
async def test_a_client_connects_with_separate_credentials(amqp_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_url)
    bare = parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl()
    settings = load_settings(
        amqp={"url": bare, "username": parts.username, "password": parts.password}
    )
    async with Client(settings) as client:
        assert (await client.send_custom_event("t.nodes.credentials")).routed is False


def test_a_bad_node_list_given_to_the_cli_is_a_configuration_error() -> None:
    bad = "amqp://u:s3cret@rabbit-a/,amqp://u:0ther-pw@rabbit-b/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "adapter._cli", "send", "t.nodes.cli", "--url", bad],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    assert "node 2 (amqp://u:***@rabbit-b/) differs from node 1" in result.stderr
    assert "s3cret" not in result.stderr and "0ther-pw" not in result.stderr
