"""
Facts about this machine and the sizes users write: `cores`, `cpuBudget`,
`parseSize`.
"""

from __future__ import annotations

import os
import re

__all__ = ["cores", "cpuBudget", "parseSize"]

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parseSize(size: int | float | str | None) -> int | None:
    """
    A memory size in bytes: an int or float of bytes, or a string with a
    unit: ``"500M"``, ``"1.5 GB"``, ``"2GiB"`` (K, M, G, T are powers of 1024).
    """
    if size is None:
        return None
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"a memory size must be positive, not {size!r}")
        return int(size)
    match = _SIZE.match(str(size))
    if match is None:
        raise ValueError(f"not a memory size: {size!r} (try e.g. 512M or 2G)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def cores() -> int:
    """How many CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpuBudget(cgroupRoot: str = "/sys/fs/cgroup") -> float:
    """
    How many CPUs' worth of time this process may use at once: `cores`, or
    less under a cgroup CPU quota (a container's ``--cpus``, read as the
    container sees it: at the root of *cgroupRoot*, version 2 or 1).
    """
    budget = float(cores())
    quota = _cgroupQuota(cgroupRoot)
    return budget if quota is None else min(budget, quota)


def _cgroupQuota(root: str) -> float | None:
    """The CPU quota over its period (None: no quota, or none readable)."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:  # version 2: "quota period"
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        quota = period = ""
        for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # version 1
            try:
                with open(os.path.join(root, folder, "cpu.cfs_quota_us")) as f:
                    quota = f.read().strip()
                with open(os.path.join(root, folder, "cpu.cfs_period_us")) as f:
                    period = f.read().strip()
                break
            except OSError:
                continue
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # ("max", or nothing found)
    if q <= 0 or p <= 0:
        return None  # (-1: no quota)
    return q / p
