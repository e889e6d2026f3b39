"""Where engine workers come from besides ``--worker``: Kubernetes pods, and the worker list that
several gateway replicas share through Redis."""

from herdsman.discovery.kubernetes import (
    DiscoveryConfig,
    FleetSink,
    PodWatcher,
    parse_selector,
    pod_target,
)

__all__ = ["DiscoveryConfig", "FleetSink", "PodWatcher", "parse_selector", "pod_target"]
