"""Routing policies, one module per family, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable

from herdsman.routing.policies.base import PolicyOptions, RoutingPolicy, RoutingRequest
from herdsman.routing.policies.cache_aware import CacheAwarePolicy, PrefixIndex
from herdsman.routing.policies.hashing import ConsistentHashPolicy, PrefixHashPolicy
from herdsman.routing.policies.load import LeastLoadPolicy, PowerOfTwoPolicy
from herdsman.routing.policies.random_choice import RandomPolicy
from herdsman.routing.policies.round_robin import RoundRobinPolicy

# name -> factory(options, prefix index or None). Only cache_aware uses the index.
POLICIES: dict[str, Callable[[PolicyOptions, PrefixIndex | None], RoutingPolicy]] = {
    "round_robin": lambda o, i: RoundRobinPolicy(),
    "random": lambda o, i: RandomPolicy(),
    "power_of_two": lambda o, i: PowerOfTwoPolicy(),
    "least_load": lambda o, i: LeastLoadPolicy(),
    "consistent_hash": lambda o, i: ConsistentHashPolicy(o.ring_replicas),
    "prefix_hash": lambda o, i: PrefixHashPolicy(o.prefix_tokens, o.ring_replicas),
}


def make_policy(
    name: str, options: PolicyOptions | None = None, index: PrefixIndex | None = None
) -> RoutingPolicy:
    options = options or PolicyOptions()
    if name == "cache_aware":
        if index is None:
            raise ValueError("cache_aware needs a prefix index")
        return CacheAwarePolicy(
            index, options.balance_abs, options.balance_rel, options.prefill_weight
        )
    if name not in POLICIES:
        known = ", ".join(sorted([*POLICIES, "cache_aware"]))
        raise ValueError(f"unknown policy {name!r}; choose from {known}")
    return POLICIES[name](options, index)


POLICY_NAMES = sorted([*POLICIES, "cache_aware"])

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "CacheAwarePolicy",
    "ConsistentHashPolicy",
    "LeastLoadPolicy",
    "PolicyOptions",
    "PowerOfTwoPolicy",
    "PrefixHashPolicy",
    "PrefixIndex",
    "RandomPolicy",
    "RoundRobinPolicy",
    "RoutingPolicy",
    "RoutingRequest",
    "make_policy",
]
