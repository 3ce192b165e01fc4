"""CPU accounting shared by the benchmarks."""

from __future__ import annotations


def machine_jiffies() -> tuple[int, int, int] | None:
    """All CPUs: busy, total and interrupt (irq + softirq: loopback TCP is largely there) jiffies."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values), values[5] + values[6]
