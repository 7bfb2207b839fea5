"""The daemon's HTTP side: vRO REST and SOAP, the JSON API, long-poll waits, health, metrics."""

from ._app import create_app

__all__ = ["create_app"]
