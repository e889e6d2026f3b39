"""How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

``os.cpu_count()`` reports the host's CPUs; a container limited to 2 CPUs on a 64-core host would
start 64 gateway processes that share 2 CPUs' worth of time (and 64x the memory).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_v2(root: Path) -> float | None:
    """cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD"."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _quota_v1(root: Path) -> float | None:
    """cgroup v1: ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    for cpu_dir in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
            period = int((cpu_dir / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half), None if unlimited."""
    return _quota_v2(root) if (root / "cpu.max").exists() else _quota_v1(root)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
