"""Authentication, authorization and rate limiting at the HTTP edge."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import adapter._http._auth as auth_module
from adapter import Client, ConfigurationError
from adapter._http._auth import (
    AuthenticationBusy,
    Authenticator,
    NotAuthenticated,
    TooManyFailures,
    covers,
)
from adapter._secrets import hash_secret, hash_token
from tests.support.http import (
    AUTH,
    HEADERS,
    LIMITED,
    PASSWORD,
    TOKEN,
    asgi_client,
    basic,
    make_settings,
)

CHALLENGE = 'Basic realm="customevent", Bearer'


@pytest.fixture
async def memory_client() -> AsyncIterator[Client]:
    async with Client("memory://") as opened:
        yield opened


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(client, make_settings()) as opened:
        yield opened


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("ops", "wrong"),
        basic("nobody", PASSWORD),
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Digest abc"},
        {"Authorization": "Basic"},
    ],
    ids=["none", "wrong-password", "unknown-user", "wrong-token", "garbage", "digest", "empty"],
)
async def test_bad_or_missing_credentials_are_401_everywhere(
    http: httpx.AsyncClient, unique_name: str, headers: dict[str, str]
) -> None:
    calls = [
        http.post(f"/vco/api/customevent/{unique_name}", headers=headers),
        http.post(f"/api/v1/events/{unique_name}", json={}, headers=headers),
        http.get(f"/api/v1/events/{unique_name}/wait?timeout=1s", headers=headers),
        http.post("/vmware-vmo-webcontrol/webservice", content=b"<x/>", headers=headers),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == CHALLENGE


async def test_basic_and_bearer_are_accepted(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    for headers in (HEADERS, {"Authorization": f"Bearer {TOKEN}"}):
        response = await http.post(f"/api/v1/events/{unique_name}", json={}, headers=headers)
        assert response.status_code == 202, response.text


async def test_names_outside_the_allow_list_are_403(
    http: httpx.AsyncClient, unique_name: str
) -> None:
    limited = basic(*LIMITED)
    refused = await http.post(f"/vco/api/customevent/{unique_name}", headers=limited)
    assert refused.status_code == 403
    assert "'limited' may not use the event name" in refused.json()["detail"]
    allowed = await http.post("/vco/api/customevent/t.limited.x", headers=limited)
    assert allowed.status_code == 200
    wider = await http.get("/api/v1/events/t.%23/wait?timeout=1s", headers=limited)
    assert wider.status_code == 403
    inside = await http.get("/api/v1/events/t.limited.*/wait?timeout=0.1s", headers=limited)
    assert inside.status_code == 204
    # The name is validated before the allow list: a wildcard cannot sneak into a send.
    sneaky = await http.post("/vco/api/customevent/t.limited.%23", headers=limited)
    assert sneaky.status_code == 400


async def test_internal_events_are_read_only_by_read_internal(
    memory_client: Client, unique_name: str
) -> None:
    # `allow` once covered both kinds: `limited` (allow t.limited.#) read what trusted backends
    # publish under the same names. Now only read_internal opens internal events to a principal.
    limited = basic(*LIMITED)
    async with asgi_client(memory_client, make_settings()) as http:
        internal = await http.get(
            "/api/v1/events/t.limited.x/wait?timeout=0.1s&kind=internal", headers=limited
        )
        external = await http.get(
            "/api/v1/events/t.limited.x/wait?timeout=0.1s&kind=external", headers=limited
        )
        ops_internal = await http.get(
            f"/api/v1/events/{unique_name}/wait?timeout=0.1s&kind=internal", headers=HEADERS
        )
        ops_outside = await http.get(
            "/api/v1/events/vm.x/wait?timeout=0.1s&kind=internal", headers=HEADERS
        )
    assert internal.status_code == 403
    assert (
        "'limited' may not read internal events named 't.limited.x'" in (internal.json()["detail"])
    )
    assert "read_internal" in internal.json()["detail"]
    assert external.status_code == 204
    assert ops_internal.status_code == 204  # read_internal t.#
    assert ops_outside.status_code == 403  # vm.* is in allow, not in read_internal


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ("t.#", "t.a.b", True),
        ("t.#", "t.*.b", True),
        ("t.#", "t.#", True),
        ("t.#", "#", False),
        ("t.*", "t.a", True),
        ("t.*", "t.*", True),
        ("t.*", "t.#", False),
        ("t.*", "t.a.b", False),
        ("*.x", "a.x", True),
        ("#", "anything.#", True),
        ("t.limited.#", "t.*", False),
        ("vm.*.alarm", "vm.*.alarm", True),
        ("vm.*.alarm", "vm.#.alarm", False),
        ("a.#.z", "a.b.*.z", True),
    ],
)
def test_allow_patterns_cover_requested_patterns(
    allowed: str, requested: str, expected: bool
) -> None:
    assert covers(allowed, requested) is expected


async def test_anonymous_only_when_enabled(memory_client: Client, unique_name: str) -> None:
    settings = make_settings(auth={"anonymous": True, "anonymous_allow": ["t.#"]})
    async with asgi_client(memory_client, settings) as http:
        ok = await http.post(f"/vco/api/customevent/{unique_name}")
        outside = await http.post("/vco/api/customevent/other.name")
        wrong = await http.post(f"/vco/api/customevent/{unique_name}", headers=basic("ops", "x"))
        internal = await http.get(f"/api/v1/events/{unique_name}/wait?timeout=1s&kind=internal")
    assert ok.status_code == 200
    assert outside.status_code == 403
    assert wrong.status_code == 401  # a bad credential never falls back to anonymous
    assert internal.status_code == 403


async def test_rate_limit_is_429_with_retry_after(memory_client: Client, unique_name: str) -> None:
    settings = make_settings(http={"rate_limit": 0.5, "rate_burst": 3})
    async with asgi_client(memory_client, settings) as http:
        statuses = [
            (await http.post(f"/vco/api/customevent/{unique_name}", headers=HEADERS))
            for _ in range(4)
        ]
        other = await http.post("/vco/api/customevent/t.limited.x", headers=basic(*LIMITED))
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[-1].headers["retry-after"] == "2"
    assert "rate limit" in statuses[-1].json()["detail"]
    assert other.status_code == 200  # buckets are per principal


async def test_verified_credentials_are_cached_by_hmac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = auth_module.verify_secret

    def counting(secret: str, hashed: str) -> bool:
        calls.append(secret)
        return real(secret, hashed)

    monkeypatch.setattr(auth_module, "verify_secret", counting)
    authenticator = Authenticator(make_settings().auth)
    header = basic(*AUTH)["Authorization"]
    for _ in range(5):
        caller = await authenticator.authenticate(header)
        assert caller.name == "ops"
    assert len(calls) == 1
    bad = basic("ops", "guess")["Authorization"]
    for _ in range(5):
        with pytest.raises(NotAuthenticated):
            await authenticator.authenticate(bad)
    assert len(calls) == 2  # a refused credential is remembered for a while
    # The caches hold keyed digests only, never anything the secret can be read from.
    keys = [*authenticator._verified, *authenticator._refused]
    assert all(len(key) == 32 for key in keys)
    for key in keys:
        assert PASSWORD.encode() not in key
        assert base64.b64encode(f"ops:{PASSWORD}".encode()) not in key


async def test_secrets_never_reach_the_logs(
    http: httpx.AsyncClient, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await http.post(f"/vco/api/customevent/{unique_name}", headers=HEADERS)
    await http.post(f"/vco/api/customevent/{unique_name}", headers=basic("ops", "leak-me"))
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "adapter.http.access" in {r.name for r in caplog.records}
    assert PASSWORD not in text
    assert "leak-me" not in text
    assert HEADERS["Authorization"].split()[1] not in text


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every scrypt computation from here on (the password hashes of make_settings are made
    before the fixture starts counting)."""
    make_settings()
    calls: list[bytes] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: Any) -> bytes:
        calls.append(password)
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


async def test_unknown_tokens_cost_no_scrypt(scrypt_calls: list[bytes]) -> None:
    # With scrypt token hashes, 200 random tokens once delayed a real user's login by 8.8 s.
    authenticator = Authenticator(make_settings().auth)
    for i in range(200):
        with pytest.raises(NotAuthenticated):
            await authenticator.authenticate(f"Bearer {secrets.token_hex(32)}", f"10.0.{i}.1")
    assert scrypt_calls == []
    caller = await authenticator.authenticate(f"Bearer {TOKEN}", "10.1.0.1")
    assert caller.name == "ops"
    assert scrypt_calls == []
    assert (await authenticator.authenticate(HEADERS["Authorization"], "10.1.0.1")).name == "ops"
    assert len(scrypt_calls) == 1  # a password is still checked with scrypt, once


async def test_failed_authentication_is_limited_per_address(scrypt_calls: list[bytes]) -> None:
    settings = make_settings(auth={"failure_burst": 5, "failure_rate": 0.01})
    authenticator = Authenticator(settings.auth)
    for i in range(5):
        with pytest.raises(NotAuthenticated):
            await authenticator.authenticate(
                basic("ops", f"guess-{i}")["Authorization"], "10.9.9.9"
            )
    checks = len(scrypt_calls)
    with pytest.raises(TooManyFailures, match=r"too many failed authentications from 10\.9"):
        await authenticator.authenticate(basic("ops", "guess-5")["Authorization"], "10.9.9.9")
    assert len(scrypt_calls) == checks  # refused before any check
    # Another address is not affected; a success gives its token back.
    for _ in range(6):
        assert (await authenticator.authenticate(f"Bearer {TOKEN}", "10.8.8.8")).name == "ops"


async def test_too_many_failures_is_429_and_a_full_hashing_queue_refuses(
    monkeypatch: pytest.MonkeyPatch, unique_name: str
) -> None:
    settings = make_settings(
        auth={"failure_burst": 2, "failure_rate": 0.01, "hash_workers": 1, "max_pending_checks": 1}
    )
    async with Client("memory://") as memory, asgi_client(memory, settings) as http:
        statuses = [
            (await http.post(f"/vco/api/customevent/{unique_name}", headers=basic("ops", f"x{i}")))
            for i in range(3)
        ]
        assert [r.status_code for r in statuses] == [401, 401, 429]
        assert "retry-after" in statuses[-1].headers
    release = threading.Event()
    real = auth_module.verify_secret

    def blocking(secret: str, hashed: str) -> bool:
        release.wait(10)
        return real(secret, hashed)

    monkeypatch.setattr(auth_module, "verify_secret", blocking)
    settings = make_settings(auth={"hash_workers": 1, "max_pending_checks": 1})
    authenticator = Authenticator(settings.auth)
    first = asyncio.create_task(authenticator.authenticate(basic("ops", "a")["Authorization"]))
    await asyncio.sleep(0.05)
    with pytest.raises(AuthenticationBusy, match=r"auth.max_pending_checks"):
        await authenticator.authenticate(basic("ops", "b")["Authorization"], "10.7.7.7")
    release.set()
    with pytest.raises(NotAuthenticated):
        await first
    authenticator.close()


def test_scrypt_token_hashes_are_warned_about_and_passwords_must_use_scrypt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    principal = {"name": "slow", "token_hash": hash_secret("t" * 40), "allow": ["#"]}
    with caplog.at_level(logging.WARNING, logger="adapter.http.auth"):
        Authenticator(make_settings(auth={"principals": [principal]}).auth)
    assert "hash-secret --token" in caplog.text
    with pytest.raises(ConfigurationError, match="password_hash must be a scrypt hash"):
        make_settings(auth={"principals": [{"name": "x", "password_hash": hash_token("p" * 40)}]})
