"""Static sharding: which shard handles an (account, region) pair.

Every (account, region) pair hashes to one of ``slots`` slots (BLAKE2b of
``account \\x1f region``: stable across processes, hosts and Python versions, unlike
``hash()``), and each slot belongs to one of ``count`` shards by jump consistent hashing
(Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014): going from N to
N+1 shards moves only about 1/(N+1) of the slots, all of them to the new shard. With one shard
everything is owned, and an inventory is returned as it is.

Pure functions (no I/O): discovery's inventory is filtered here, the rest of ingest never
sees what another shard owns.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from aggregator.aws.inventory import Inventory
from aggregator.config import ShardSettings

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757


def slot_of(account_id: str, region: str, slots: int) -> int:
    """The slot of an (account, region) pair: the first 8 bytes of BLAKE2b-64 of
    ``account \\x1f region`` (big endian) modulo ``slots``."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    digest = hashlib.blake2b(f"{account_id}\x1f{region}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % slots


def shard_of(slot: int, count: int) -> int:
    """The shard (0 .. count-1) of a slot by jump consistent hashing of the slot number."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    key = slot & _MASK64
    b, j = -1, 0
    while j < count:
        b = j
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def owns(shard: ShardSettings, account_id: str, region: str) -> bool:
    """Whether ``shard`` (its resolved index, its count and slots) handles this pair."""
    if shard.count <= 1:
        return True
    return shard_of(slot_of(account_id, region, shard.slots), shard.count) == shard.ordinal


def owned_slots(shard: ShardSettings) -> list[int]:
    """The slots this shard owns (all of them with one shard)."""
    return [s for s in range(shard.slots) if shard_of(s, shard.count) == shard.ordinal]


def for_shard(inventory: Inventory, shard: ShardSettings) -> Inventory:
    """The part of ``inventory`` one shard handles: regions per account and sources of its
    (account, region) pairs, and the failures of those pairs (an account-wide failure, with no
    region, is kept by every shard: each of them misses that account's pairs). Accounts and
    trails are kept whole: enrichment needs every account, and which pairs a trail covers is
    decided against the (filtered) regions. One shard: the inventory itself."""
    if shard.count <= 1:
        return inventory
    regions = {
        account: [r for r in rs if owns(shard, account, r)]
        for account, rs in inventory.regions.items()
    }
    return replace(
        inventory,
        regions={a: rs for a, rs in regions.items() if rs},
        sources=[s for s in inventory.sources if owns(shard, s.account_id, s.region)],
        failures=[
            f for f in inventory.failures if f.region is None or owns(shard, f.account_id, f.region)
        ],
    )
