"""The buses a behaviour test runs on."""

from __future__ import annotations

import pytest

# The in-process bus, the real RabbitMQ, and a bridge daemon in between (``Client("http://...")``,
# where only external events travel): the ``bus_kind`` fixture of tests/conftest.py.
over_http = pytest.mark.parametrize(
    "bus_kind",
    ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq), "http"],
)
