"""Hashing of passwords and tokens for the config (``customevent hash-secret``), with scrypt.

A hash reads ``scrypt$<log2 n>$<r>$<p>$<salt>$<digest>`` (salt and digest base64). Verification is
constant-time; it is deliberately slow, so the daemon caches what it verified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ._exceptions import ConfigurationError

__all__ = ["hash_secret", "verify_secret"]

_LOG2_N = 14
_R = 8
_P = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` to put in the config."""
    if not secret:
        raise ConfigurationError("an empty password or token cannot be hashed")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2**_LOG2_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_LOG2_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, hashed: str) -> bool:
    """True if ``secret`` matches ``hashed``; raises ``ConfigurationError`` for a malformed hash."""
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
