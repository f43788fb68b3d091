"""Per-key credits in the real SQLite job database, including concurrent spending."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from segany.errors import InvalidInput, SeganyError
from segany.server.jobs.store import JobStore
from segany.server.jobs.quotas import QuotaExceeded, Quotas


@pytest.fixture()
def quotas(tmp_path: Path) -> Quotas:
    return Quotas(tmp_path / "segany.db")


def test_keys_without_a_quota_are_unlimited(quotas: Quotas) -> None:
    assert quotas.get("free") is None
    assert all(quotas.consume("free") is None for _ in range(5))
    assert quotas.refund("free") is None
    assert quotas.get("free") is None


def test_set_consume_until_exhausted(quotas: Quotas) -> None:
    quotas.set("k", 3)
    assert [quotas.consume("k"), quotas.consume("k")] == [2, 1]
    with pytest.raises(QuotaExceeded) as caught:
        quotas.consume("k", 2)  # more than is left: nothing is spent
    assert caught.value.remaining == 1
    assert str(caught.value) == "Not enough credits"
    assert isinstance(caught.value, SeganyError)
    assert quotas.consume("k") == 0
    with pytest.raises(QuotaExceeded):
        quotas.consume("k")
    assert quotas.get("k") == 0


def test_add_refund_set_remove(quotas: Quotas) -> None:
    assert quotas.add("k", 5) == 5
    assert quotas.add("k", 2) == 7
    assert quotas.consume("k", 4) == 3
    assert quotas.refund("k", 4) == 7
    quotas.set("k", 1)
    assert quotas.get("k") == 1
    assert quotas.all() == {"k": 1}
    assert quotas.remove("k") is True
    assert quotas.remove("k") is False
    assert quotas.get("k") is None


@pytest.mark.parametrize("call, field", [
    (lambda q: q.set("k", -1), "credits"),
    (lambda q: q.set("k", 1.5), "credits"),
    (lambda q: q.add("k", True), "credits"),
    (lambda q: q.consume("k", 0), "amount"),
    (lambda q: q.refund("k", -2), "amount"),
])
def test_invalid_counts(quotas: Quotas, call, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        call(quotas)
    assert caught.value.field == field


def test_persisted_and_shared_with_the_job_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "segany.db")
    Quotas(store.db).set("k", 9)
    store.close()
    reopened = Quotas(tmp_path / "segany.db")
    assert reopened.get("k") == 9
    components = reopened.db.connection().execute(
        "SELECT component, version FROM schema_migrations ORDER BY component").fetchall()
    assert [tuple(row) for row in components] == [("jobs", 1), ("quotas", 1)]


def test_concurrent_consumers_never_overspend(tmp_path: Path) -> None:
    credits, threads, tries = 120, 6, 30  # 180 attempts for 120 credits
    Quotas(tmp_path / "segany.db").set("k", credits)
    remainders: list[int] = []
    refusals: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def spend() -> None:
        quotas = Quotas(tmp_path / "segany.db")  # its own connections, as separate processes would have
        start.wait()
        for _ in range(tries):
            try:
                left = quotas.consume("k")
            except QuotaExceeded:
                with lock:
                    refusals.append(1)
            else:
                with lock:
                    remainders.append(left)

    workers = [threading.Thread(target=spend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(remainders) == list(range(credits))  # every credit spent exactly once
    assert len(refusals) == threads * tries - credits
    assert Quotas(tmp_path / "segany.db").get("k") == 0
