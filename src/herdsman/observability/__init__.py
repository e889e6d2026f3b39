"""Metrics (Prometheus text format, aggregated over the gateway's processes); traces later.

The metrics load on first use: they import prometheus_client and the tokenizer's cache, which the
supervisor (it imports ``herdsman.observability.tracing`` through the engine clients) must not
pay for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herdsman.observability.gateway_metrics import METRICS, GatewayMetrics
    from herdsman.observability.metrics import Counter, Gauge, Histogram, MetricsRegistry

__all__ = ["METRICS", "Counter", "GatewayMetrics", "Gauge", "Histogram", "MetricsRegistry"]


def __getattr__(name: str) -> Any:
    if name in ("METRICS", "GatewayMetrics"):
        from herdsman.observability import gateway_metrics

        return getattr(gateway_metrics, name)
    if name in ("Counter", "Gauge", "Histogram", "MetricsRegistry"):
        from herdsman.observability import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
