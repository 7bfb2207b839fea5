"""Who is calling: HTTP Basic and bearer tokens checked against ``auth.principals``, and what
event names a caller may use (its ``allow`` patterns).

Passwords are scrypt hashes, slow on purpose; tokens a keyed hash, fast (``adapter._secrets``). A
verified credential is remembered under an HMAC of it (keyed with a random per-process key, so the
cache never holds anything that reveals the secret); a refused one is remembered briefly, so
repeating a bad credential costs no check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import ConfigurationError
from .._names import pattern_covers as covers
from .._secrets import hash_secret, is_slow_hash, verify_secret
from .._settings import AuthSettings, Principal
from ._ratelimit import RateLimiter

__all__ = [
    "CHALLENGE",
    "AuthenticationBusy",
    "Authenticator",
    "Caller",
    "NotAuthenticated",
    "TooManyFailures",
    "covers",
]

log = logging.getLogger("adapter.http.auth")
T = TypeVar("T")

CHALLENGE = 'Basic realm="customevent", Bearer'
_VERIFIED_MAX = 1024
_REFUSED_MAX = 4096
_REFUSED_SECONDS = 5.0


class NotAuthenticated(Exception):
    """No valid credential; the edge answers 401."""


class TooManyFailures(Exception):
    """The calling address failed to authenticate too often; the edge answers 429."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationBusy(Exception):
    """Too many password checks are waiting for a hashing thread; the edge answers 503."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated principal, or the anonymous caller (``name`` None)."""

    name: str | None
    allow: tuple[str, ...]
    read_internal: tuple[str, ...] = ()

    def may_use(self, name: str) -> bool:
        """True if the external event name, or name pattern, lies inside an ``allow`` pattern."""
        return any(covers(pattern, name) for pattern in self.allow)

    def may_read(self, kind: str, name: str) -> bool:
        """True if the caller may wait on ``kind`` events named ``name`` (a name or pattern):
        external ones by ``allow``, internal ones only by ``read_internal``."""
        patterns = self.read_internal if kind == "internal" else self.allow
        return any(covers(pattern, name) for pattern in patterns)


def _credential_key(key: bytes, scheme: bytes, credential: bytes) -> bytes:
    return hmac.new(key, scheme + b"\0" + credential, hashlib.sha256).digest()


class Authenticator:
    """Checks ``Authorization`` headers against the configured principals.

    Work is bounded whatever callers send: a token is checked by a keyed hash (microseconds);
    a password by scrypt in ``auth.hash_workers`` threads, with at most ``auth.max_pending_checks``
    waiting (past it: ``AuthenticationBusy``); and a credential not verified before costs the
    calling address one of its ``auth.failure_burst`` failures (refilled at ``auth.failure_rate``
    per second, given back on success): past them, ``TooManyFailures`` without any check.
    """

    def __init__(self, settings: AuthSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock
        self._by_name = {p.name: p for p in settings.principals}
        self._with_token = [p for p in settings.principals if p.token_hash]
        self._anonymous = (
            Caller(None, tuple(settings.anonymous_allow)) if settings.anonymous else None
        )
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, Caller] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Caller | None]] = {}
        self._decoy: str | None = None
        self._failures = RateLimiter(settings.failure_rate, settings.failure_burst, clock)
        self._workers: ThreadPoolExecutor | None = None
        self._slow_checks = 0
        for principal in self._with_token:
            assert principal.token_hash is not None
            if is_slow_hash(principal.token_hash):
                log.warning(
                    "principal %r has a scrypt token_hash: every bearer request with an unknown "
                    "token then costs a scrypt check; hash the token with "
                    "'customevent hash-secret --token' instead",
                    principal.name,
                )

    @property
    def anonymous(self) -> bool:
        return self._anonymous is not None

    def close(self) -> None:
        """Stop the hashing threads (a check in progress finishes)."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)

    async def authenticate(self, authorization: str | None, peer: str = "unknown") -> Caller:
        """The caller named by an ``Authorization`` header from address ``peer``; raises
        ``NotAuthenticated``, ``TooManyFailures`` or ``AuthenticationBusy``.

        Without a header the caller is anonymous when ``auth.anonymous`` is on. A header that is
        present but wrong is refused even then: a typo must not silently drop privileges.
        """
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise NotAuthenticated("credentials required (HTTP Basic or a bearer token)")
        scheme, _, credential = authorization.strip().partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if scheme not in ("basic", "bearer") or not credential:
            raise NotAuthenticated("the Authorization header must be 'Basic ...' or 'Bearer ...'")
        raw = credential.encode("utf-8", "surrogateescape")
        key = _credential_key(self._key, scheme.encode(), raw)
        caller = self._verified.get(key)
        if caller is not None:
            self._verified.move_to_end(key)
            return caller
        refused_until = self._refused.get(key)
        if refused_until is not None and refused_until > self._clock.monotonic():
            raise NotAuthenticated("invalid credentials")
        pending = self._pending.get(key)
        started = pending is None
        if pending is None:
            # A new credential may be a guess: checking it costs the address one of its failures
            # up front, so that concurrent guesses cannot all be checked before one fails.
            delay = self._failures.acquire(peer)
            if delay > 0:
                raise TooManyFailures(
                    f"too many failed authentications from {peer}; retry in {math.ceil(delay)}s",
                    retry_after=math.ceil(delay),
                )
            # Concurrent requests with the same new credential share one verification.
            pending = asyncio.ensure_future(self._verify(scheme, credential))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        found = await asyncio.shield(pending)
        if found is None:
            self._remember(
                self._refused, key, self._clock.monotonic() + _REFUSED_SECONDS, _REFUSED_MAX
            )
            raise NotAuthenticated("invalid credentials")
        if started:
            self._failures.refund(peer)
        self._remember(self._verified, key, found, _VERIFIED_MAX)
        return found

    @staticmethod
    def _remember(cache: OrderedDict[bytes, T], key: bytes, value: T, limit: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)

    async def _verify(self, scheme: str, credential: str) -> Caller | None:
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return None
            user, sep, password = decoded.partition(":")
            if not sep:
                return None
            principal = self._by_name.get(user)
            hashed = principal.password_hash if principal is not None else None
            if principal is None or hashed is None:
                # Spend the same time as a real check, so a probe cannot tell users apart.
                await self._check_secret(password or "-", await self._decoy_hash())
                return None
            return await self._check(principal, password, hashed, "password_hash")
        for principal in self._with_token:
            assert principal.token_hash is not None
            found = await self._check(principal, credential, principal.token_hash, "token_hash")
            if found is not None:
                return found
        return None

    async def _check(
        self, principal: Principal, secret: str, hashed: str, field: str
    ) -> Caller | None:
        try:
            ok = await self._check_secret(secret, hashed)
        except ConfigurationError as exc:
            log.error("principal %r has an unusable %s: %s", principal.name, field, exc)
            return None
        if not ok:
            return None
        return Caller(principal.name, tuple(principal.allow), tuple(principal.read_internal))

    async def _check_secret(self, secret: str, hashed: str) -> bool:
        if not is_slow_hash(hashed):
            return verify_secret(secret, hashed)
        if self._slow_checks >= self._settings.max_pending_checks:
            raise AuthenticationBusy(
                f"{self._slow_checks} password checks are already waiting "
                "(auth.max_pending_checks); retry in a moment"
            )
        if self._workers is None:
            self._workers = ThreadPoolExecutor(
                self._settings.hash_workers, thread_name_prefix="customevent-scrypt"
            )
        self._slow_checks += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._workers, verify_secret, secret, hashed)
        finally:
            self._slow_checks -= 1

    async def _decoy_hash(self) -> str:
        if self._decoy is None:
            self._decoy = await asyncio.to_thread(hash_secret, secrets.token_hex(16))
        return self._decoy
