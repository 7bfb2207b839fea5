"""Hashing of passwords and tokens for the config (``customevent hash-secret``).

Passwords are guessable, so their hash is slow on purpose: ``scrypt$<log2 n>$<r>$<p>$<salt>$
<digest>``. Tokens are long random strings that nobody can guess, so a fast keyed hash is as safe
and costs a microsecond instead of tens of milliseconds: ``hmac-sha256$<salt>$<digest>``, the
HMAC-SHA256 of the token keyed with the salt (both base64). Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ._exceptions import ConfigurationError

__all__ = ["MIN_TOKEN_LENGTH", "hash_secret", "hash_token", "is_slow_hash", "verify_secret"]

_LOG2_N = 14
_R = 8
_P = 1
_TOKEN_SCHEME = "hmac-sha256"
MIN_TOKEN_LENGTH = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_secret(secret: str, *, log2_n: int = _LOG2_N) -> str:
    """A salted scrypt hash of ``secret`` to put in the config. ``log2_n`` is scrypt's cost;
    the hash records it, so a lower one (the tests', where checks are thousands a run) still
    verifies."""
    if not secret:
        raise ConfigurationError("an empty password or token cannot be hashed")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2**log2_n, r=_R, p=_P, dklen=32)
    return f"scrypt${log2_n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def hash_token(token: str) -> str:
    """A salted HMAC-SHA256 of a bearer token (at least ``MIN_TOKEN_LENGTH`` characters: fast
    to check, because a token that long and random cannot be guessed)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"a token must be at least {MIN_TOKEN_LENGTH} characters of random text (e.g. "
            "`openssl rand -hex 32`); hash a password without --token"
        )
    salt = secrets.token_bytes(16)
    digest = hmac.new(salt, token.encode("utf-8"), hashlib.sha256).digest()
    return f"{_TOKEN_SCHEME}${_b64(salt)}${_b64(digest)}"


def is_slow_hash(hashed: str) -> bool:
    """True for a scrypt hash (checked in a worker thread), False for a token's HMAC."""
    return not hashed.startswith(_TOKEN_SCHEME + "$")


def _verify_token(secret: str, hashed: str) -> bool:
    try:
        _, salt_text, digest_text = hashed.split("$")
        salt, digest = _unb64(salt_text), _unb64(digest_text)
    except ValueError as exc:
        raise ConfigurationError(
            f"malformed token hash (make one with 'customevent hash-secret --token'): {exc}"
        ) from None
    candidate = hmac.new(salt, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return hmac.compare_digest(candidate, digest)


def verify_secret(secret: str, hashed: str) -> bool:
    """True if ``secret`` matches ``hashed`` (scrypt or a token's HMAC); raises
    ``ConfigurationError`` for a malformed hash."""
    if not is_slow_hash(hashed):
        return _verify_token(secret, hashed)
    try:
        scheme, log2_n, r, p, salt_text, digest_text = hashed.split("$")
        if scheme != "scrypt":
            raise ValueError(f"unknown scheme {scheme!r}")
        salt, digest = _unb64(salt_text), _unb64(digest_text)
        n, r_value, p_value = 2 ** int(log2_n), int(r), int(p)
        if not (1 <= int(log2_n) <= 20 and 1 <= r_value <= 32 and 1 <= p_value <= 16):
            raise ValueError("cost parameters out of range")
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"malformed secret hash (make one with 'customevent hash-secret'): {exc}"
        ) from None
    candidate = hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=n,
        r=r_value,
        p=p_value,
        dklen=len(digest),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(candidate, digest)
