"""TLS for the bridge's own connections to RabbitMQ (amqps://) and the MQTT broker (mqtts://)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

from ._exceptions import ConfigurationError

__all__ = ["TlsFiles", "client_tls_context"]


class TlsFiles(Protocol):
    """The TLS keys of the amqp and mqtt settings sections."""

    @property
    def ca_file(self) -> Path | None: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


def client_tls_context(files: TlsFiles, *, what: str) -> ssl.SSLContext:
    """A verifying client context with the configured CA bundle and client certificate; a
    ``ConfigurationError`` naming ``what`` when a file cannot be loaded."""
    try:
        context = ssl.create_default_context(cafile=str(files.ca_file) if files.ca_file else None)
        if files.cert_file:
            context.load_cert_chain(
                str(files.cert_file), str(files.key_file) if files.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the {what} TLS files: {exc}") from None
    return context
