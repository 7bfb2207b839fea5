"""The package's version, from the installed distribution's metadata (``pyproject.toml``)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("customevent-bridge")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
