"""Static sharding: an (account, region) pair's slot is a stable BLAKE2b hash, a slot's shard
is jump consistent hashing (balanced, and N → N+1 moves only about 1/(N+1) of the slots, all to
the new shard), and a shard's inventory holds only its pairs."""

from __future__ import annotations

import hashlib

import pytest

from aggregator.aws.inventory import AccountFailure, Inventory, Source
from aggregator.aws.slots import for_shard, owned_slots, owns, shard_of, slot_of
from aggregator.config import ShardSettings


def reference_jump(key: int, buckets: int) -> int:
    """Lamping & Veach's published algorithm, written out again here with floats as in the
    paper (independent of the module's integer formulation)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def test_slot_of_is_blake2b_of_account_unit_separator_region() -> None:
    """The slot is computed from the definition, not from Python's per-process hash()."""
    for account, region, slots in (
        ("111111111111", "us-east-1", 256),
        ("222222222222", "eu-west-1", 256),
        ("333333333333", "ap-southeast-2", 7),
    ):
        digest = hashlib.blake2b(f"{account}\x1f{region}".encode(), digest_size=8).digest()
        assert slot_of(account, region, slots) == int.from_bytes(digest, "big") % slots


def test_slot_and_shard_fixed_values_do_not_change() -> None:
    """Values pinned once (computed with hashlib and the paper's code): a change of either
    function would move every installation's slots."""
    assert slot_of("111111111111", "us-east-1", 256) == 204
    assert slot_of("222222222222", "eu-west-1", 256) == 10
    assert slot_of("123456789012", "ap-southeast-2", 256) == 218
    assert [shard_of(s, 3) for s in range(12)] == [0, 0, 0, 2, 1, 1, 2, 0, 0, 2, 2, 2]
    assert [shard_of(s, 5) for s in range(12)] == [0, 0, 3, 3, 1, 4, 2, 0, 4, 2, 2, 2]


def test_shard_of_matches_the_published_jump_hash() -> None:
    """Every slot of 256 for 1..16 shards equals the paper's algorithm; one shard owns all."""
    for count in range(1, 17):
        for slot in range(256):
            assert shard_of(slot, count) == reference_jump(slot, count)
    assert {shard_of(s, 1) for s in range(256)} == {0}


@pytest.mark.parametrize("count", [2, 3, 4, 5, 8])
def test_slots_are_balanced_over_shards(count: int) -> None:
    """256 slots over N shards: each shard within ±40% of 256/N."""
    sizes = [len(owned_slots(ShardSettings(index=i, count=count))) for i in range(count)]
    assert sum(sizes) == 256
    mean = 256 / count
    assert all(0.6 * mean <= n <= 1.4 * mean for n in sizes), sizes


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_adding_a_shard_moves_about_one_in_n_plus_one_slots_all_to_the_new_shard(n: int) -> None:
    """N → N+1: the moved slots all go to shard N and are about 256/(N+1) (±50%)."""
    moved = [s for s in range(256) if shard_of(s, n) != shard_of(s, n + 1)]
    assert all(shard_of(s, n + 1) == n for s in moved)
    expected = 256 / (n + 1)
    assert 0.5 * expected <= len(moved) <= 1.5 * expected, len(moved)


def test_owns_partitions_pairs_and_one_shard_owns_everything() -> None:
    """Every pair is owned by exactly one of N shards; with one shard by that shard."""
    pairs = [(f"{i:012d}", r) for i in range(40) for r in ("us-east-1", "eu-west-1")]
    for count in (1, 2, 3):
        shards = [ShardSettings(index=i, count=count) for i in range(count)]
        for account, region in pairs:
            assert sum(owns(s, account, region) for s in shards) == 1


def source(account: str, region: str) -> Source:
    return Source(
        source_id=f"trail|{account}|{region}",
        bucket="trail",
        prefix=f"AWSLogs/{account}/CloudTrail/{region}/",
        account_id=account,
        region=region,
    )


def test_for_shard_keeps_only_the_shards_pairs_and_one_shard_the_same_inventory() -> None:
    """Sources, regions and per-region failures are split; account-wide failures kept."""
    accounts = [f"{i:012d}" for i in range(1, 13)]
    regions = ["us-east-1", "eu-west-1", "ap-south-1"]
    inv = Inventory(
        accounts=[],
        regions={a: list(regions) for a in accounts},
        trails=[],
        sources=[source(a, r) for a in accounts for r in regions],
        failures=[
            AccountFailure(accounts[0], "assume_role", "AccessDenied"),
            AccountFailure(accounts[1], "describe_trails", "x", region="eu-west-1"),
        ],
    )
    assert for_shard(inv, ShardSettings()) is inv
    parts = [for_shard(inv, ShardSettings(index=i, count=3)) for i in range(3)]
    seen = [(s.account_id, s.region) for p in parts for s in p.sources]
    assert sorted(seen) == sorted((a, r) for a in accounts for r in regions)
    assert all(p.sources for p in parts)  # 36 pairs: every shard has some
    for i, p in enumerate(parts):
        shard = ShardSettings(index=i, count=3)
        assert all(owns(shard, a, r) for a, rs in p.regions.items() for r in rs)
        assert any(f.stage == "assume_role" for f in p.failures)
    assert sum(any(f.stage == "describe_trails" for f in p.failures) for p in parts) == 1
