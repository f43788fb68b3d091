"""Embedding cache (LRU bounded in bytes), logits cache, and the micro-batching lane."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from segany.predict.types import ImageEmbedding
from segany.server.engine.batching import BatchLane
from segany.server.engine.embedding_cache import EmbeddingCache
from segany.server.engine.logits_cache import LogitsCache, PromptKey


def _embedding(kib: int) -> ImageEmbedding:
    """A real ImageEmbedding whose tensors total `kib` KiB (contents are irrelevant to the cache)."""
    return ImageEmbedding(torch.zeros(kib * 256), (torch.zeros(0), torch.zeros(0)), (4, 4), "v")


def test_lru_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=10 * 1024)
    for name in "abcd":
        assert cache.put("v", name, _embedding(3))
    assert len(cache) == 3 and cache.nbytes == 9 * 1024  # "a" was evicted
    assert cache.get("v", "a") is None
    assert cache.get("v", "b") is not None  # now most recent
    cache.put("v", "e", _embedding(3))
    assert cache.get("v", "c") is None and cache.get("v", "b") is not None
    assert not cache.put("v", "huge", _embedding(11))  # larger than the whole cache
    assert cache.hits == 2 and cache.misses == 2 and cache.hit_rate == 0.5


def test_zero_bytes_turns_caching_off_and_aliases_resolve():
    off = EmbeddingCache(0)
    assert not off.enabled and not off.put("v", "a", _embedding(1)) and off.get("v", "a") is None
    cache = EmbeddingCache(1 << 20, max_aliases=2)
    cache.add_alias("x", "d1")
    cache.add_alias("y", "d2")
    cache.add_alias("z", "d3")
    assert cache.resolve("x") == "x" and cache.resolve("z") == "d3"
    cache.put("v1", "d3", _embedding(1))
    cache.put("v2", "d3", _embedding(1))
    assert cache.variants_of("d3") == ["v2", "v1"]


def test_logits_cache_prefers_the_previous_click():
    cache = LogitsCache(max_entries=10)
    one = PromptKey.of(np.array([[1.0, 2.0]]), np.array([1]), None)
    two = PromptKey.of(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 0]), None)
    three = PromptKey.of(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([1, 0, 1]), None)
    cache.put("v", "d", one, np.full((256, 256), 1.0))
    cache.put("v", "d", two, np.full((256, 256), 2.0))
    assert cache.find_prior("v", "d", three)[0, 0, 0] == 2.0
    assert cache.find_prior("v", "d", two)[0, 0, 0] == 1.0  # never itself: strict subsets only
    assert cache.find_prior("v", "other", three) is None
    boxed = PromptKey.of(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 0]), np.array([0, 0, 9, 9]))
    assert cache.find_prior("v", "d", boxed) is None  # a different box is a different object


def test_lane_groups_by_key_bounds_batches_and_isolates_errors():
    calls: list[tuple[str, list[int]]] = []
    release = threading.Event()

    def run_batch(key, payloads):
        release.wait(5)
        calls.append((key, list(payloads)))
        if -1 in payloads:
            raise ValueError("bad payload")
        return [p * 10 for p in payloads]

    async def scenario():
        lane = BatchLane("test", run_batch, max_batch=3, max_wait_s=0.05)
        lane.start()
        futures = [lane.submit("a" if i % 2 else "b", i) for i in range(8)]
        bad = [lane.submit("c", 1), lane.submit("c", -1)]
        release.set()
        results = await asyncio.gather(*futures)
        outcomes = await asyncio.gather(*bad, return_exceptions=True)
        await lane.stop()
        return results, outcomes

    results, outcomes = asyncio.run(scenario())
    assert results == [i * 10 for i in range(8)]
    assert outcomes[0] == 10 and isinstance(outcomes[1], ValueError)  # the good job survives its bad neighbour
    for key, payloads in calls:
        assert len(payloads) <= 3
        if key in "ab":
            assert all((p % 2 == 1) == (key == "a") for p in payloads)
    assert any(len(payloads) > 1 for _, payloads in calls)


def test_lane_skips_withdrawn_jobs():
    seen: list[int] = []

    def run_batch(key, payloads):
        seen.extend(payloads)
        return payloads

    async def scenario():
        lane = BatchLane("test", run_batch, max_batch=8, max_wait_s=0.05)
        lane.start()
        withdrawn = lane.submit("k", 1)
        withdrawn.cancel()
        kept = await lane.submit("k", 2)
        await lane.stop()
        return kept

    assert asyncio.run(scenario()) == 2
    assert seen == [2]


def test_lane_bounds_batches_by_weight():
    sizes: list[int] = []

    def run_batch(key, payloads):
        sizes.append(sum(payloads))
        return payloads

    async def scenario():
        lane = BatchLane("test", run_batch, max_batch=5, max_wait_s=0.05, weight=lambda payload: payload)
        lane.start()
        results = await asyncio.gather(*(lane.submit("k", w) for w in (2, 2, 2, 7, 1)))
        await lane.stop()
        return results

    assert asyncio.run(scenario()) == [2, 2, 2, 7, 1]
    assert sizes == [4, 2, 7, 1]  # 2+2, then 2 (7 would overflow), 7 alone, 1 (7+1 > 5)


def test_image_ids_are_per_key():
    cache = EmbeddingCache(1 << 20)
    cache.add_alias("cat", "d-alice", owner="key_a")
    assert cache.resolve("cat", "key_a") == "d-alice"
    assert cache.resolve("cat", "key_b") is None  # another key's alias does not exist for B
    assert cache.resolve("d-alice", "key_b") is None  # nor does a digest B never embedded
    cache.add_alias("cat", "d-bob", owner="key_b")  # B's squat stays B's
    assert cache.resolve("cat", "key_a") == "d-alice" and cache.resolve("cat", "key_b") == "d-bob"
    cache.add_alias("cat", "d-alice-2", owner="key_a")  # a resend under the alias moves it
    assert cache.resolve("cat", "key_a") == "d-alice-2"
