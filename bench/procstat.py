"""CPU time and memory of a process tree, read from Linux /proc.

A gateway may be one process or a supervisor with worker children (and helpers such as
multiprocessing's resource tracker), so every figure sums the root and all its descendants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    # utime + stime of the process itself (all its threads), in clock ticks.
    own_ticks: int
    # cutime + cstime: what its reaped children (and their reaped descendants) used.
    reaped_ticks: int
    rss_kb: int
    # stime + cstime: the part of the above spent in the kernel (syscalls, page faults, and on
    # loopback the receiving side's TCP work, which runs in the sender's syscall).
    kernel_ticks: int = 0


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split at the last ")".
    head, _, rest = raw.rpartition(")")
    fields = rest.split()
    # After ")", field index 0 is state; ppid 1, utime 11, stime 12, cutime 13, cstime 14, rss 21.
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        comm=head.partition("(")[2],
        own_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
        rss_kb=int(fields[21]) * PAGE_KB,
        kernel_ticks=int(fields[12]) + int(fields[14]),
    )


def _all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int) -> list[ProcStat]:
    """The root and every live descendant (found by walking ppid links over all of /proc)."""
    stats = _all_stats()
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[ProcStat] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        found.append(stats[pid])
        pending.extend(children.get(pid, ()))
    return found


def tree_cpu_ms(root: int) -> float:
    """CPU ms used so far by the tree, including descendants that already exited.

    A descendant that exits is reaped by its parent, which is in the tree, and its time moves
    into that parent's cutime/cstime; summing own + reaped over the live tree counts it once.
    """
    members = tree(root)
    ticks = sum(s.own_ticks + s.reaped_ticks for s in members)
    return ticks * 1000.0 / CLOCK_TICKS


def tree_kernel_ms(root: int) -> float:
    """The kernel's part of tree_cpu_ms (stime of the live tree plus its reaped children's)."""
    return sum(s.kernel_ticks for s in tree(root)) * 1000.0 / CLOCK_TICKS


def tree_rss(root: int) -> list[dict[str, int | str]]:
    """Resident memory of each process in the tree."""
    return [{"pid": s.pid, "comm": s.comm, "rss_kb": s.rss_kb} for s in tree(root)]


def smaps_kb(pid: int) -> tuple[int, int, int] | None:
    """(RSS, PSS, USS) in kB from /proc/PID/smaps_rollup. PSS divides each shared page among the
    processes that map it, so PSS summed over processes is what they hold together; USS counts the
    pages no other process maps. Both also move when another process maps (or stops mapping) the
    same library files; RSS does not."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines()[1:])
    except OSError:
        return None
    private = int(fields["Private_Clean"].split()[0]) + int(fields["Private_Dirty"].split()[0])
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0]), private


def role(pid: int, root: int, ppid: int) -> str:
    """What a process of a gateway's tree is, from its command line."""
    if pid == root:
        return "main"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return "gone"
    if b"resource_tracker" in cmdline:
        return "resource tracker"
    if b"forkserver" in cmdline and ppid == root:
        return "fork server"
    return "gateway process"


def tree_memory(root: int) -> list[dict[str, int | str]]:
    """RSS and PSS of each process in the tree, with its role."""
    out: list[dict[str, int | str]] = []
    for s in tree(root):
        memory = smaps_kb(s.pid)
        if memory is not None:
            out.append(
                {"pid": s.pid, "role": role(s.pid, root, s.ppid), "rss_kb": memory[0],
                 "pss_kb": memory[1]}
            )  # fmt: skip
    return out


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # inside user/nice.
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total
