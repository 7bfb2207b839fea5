"""The package's version, from the installed distribution's metadata (``pyproject.toml``)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["APP_ID", "__version__"]

#: The name the bridge gives itself on the wire (AMQP app_id, connection names).
APP_ID = "customevent-bridge"

try:
    __version__ = version(APP_ID)
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
