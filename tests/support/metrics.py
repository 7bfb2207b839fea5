"""Reading a test's own metrics: each daemon, or client given ``own_metrics()``, counts on a
registry of its own, so a test asserts the figures themselves, never deltas of a shared one."""

from __future__ import annotations

from adapter._metrics import Metrics


def own_metrics() -> Metrics:
    """Metrics on a fresh registry, for one test's client or daemon."""
    return Metrics.own()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample of ``metrics`` by its scraped name (0 before its first use)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0
