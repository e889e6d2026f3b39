"""Metrics (Prometheus text format, aggregated over the gateway's processes); traces later."""

from herdsman.observability.gateway_metrics import METRICS, GatewayMetrics
from herdsman.observability.metrics import Counter, Gauge, Histogram, MetricsRegistry

__all__ = ["METRICS", "Counter", "GatewayMetrics", "Gauge", "Histogram", "MetricsRegistry"]
