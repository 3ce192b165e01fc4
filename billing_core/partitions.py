"""The partitions work is claimed by: an account's usage reports and auto-recharge checks go to one of
``PARTITIONS``, so that workers draining different partitions never wait on each other's wallet locks."""

from __future__ import annotations

import zlib

# Workers claim one partition at a time; more partitions than worker processes keeps them all busy.
PARTITIONS = 8


def partition_of(account: str) -> int:
    # crc32 rather than hash(): stable across processes and restarts (PYTHONHASHSEED).
    return zlib.crc32(account.encode()) % PARTITIONS
