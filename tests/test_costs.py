"""Cost ledger, budgets and rate limits (ops/costs.py, ops/ratelimit.py)."""

import os
import sys

import numpy as np
import pytest

import simplevector as sv
from simplevector.ops.ratelimit import TokenBucket

sys.path.insert(0, os.path.dirname(__file__))
from _fresh_child import OLD, Counting, records  # noqa: E402


def _open(path):
    return sv.open(path, checkpoint_interval=0)


def test_the_ledger_counts_tokens_cost_and_queries_and_persists(tmp_path):
    path = tmp_path / "db"
    fn = Counting(price=0.5)                       # 0.5 per 1,000 tokens
    with _open(path) as db:
        ns = db.create_namespace("docs", embedding=fn, metric="l2")
        ns.sync(records(100))                      # "record i text": 3 tokens each
        ns.query_text("record 5 text", k=3)
        ns.query_text("record 6 text", k=3)
        report = db.cost()
        line = report.line("docs", OLD)
        assert (line.embedding_calls, line.texts, line.tokens) == (3, 102, 306)
        assert line.cost == pytest.approx(306 / 1000 * 0.5)
        assert line.by_op["sync"]["tokens"] == 300 and line.by_op["query"]["texts"] == 2
        assert line.queries == 2 and line.cost_per_query == pytest.approx(line.cost / 2)
        assert line.stored_bytes == 100 * 8 * 4 and report.tokens == 306
        assert line.embed_seconds > 0 and 0 < line.embed_cpu_seconds
        assert set(line.op_seconds) >= {"query", "upsert"}
        assert db.cost("1h").tokens == 306
    with _open(path) as db:
        assert db.cost().line("docs", OLD).tokens == 306     # persisted
        with pytest.raises(sv.InvalidInput, match="window"):
            db.cost("soon")


def test_a_hard_budget_stops_the_sync_before_the_model_is_called_and_writes_nothing(tmp_path):
    with _open(tmp_path / "db") as db:
        fn = Counting()
        ns = db.create_namespace("docs", embedding=fn, metric="l2")
        ns.sync(records(10))                       # 30 tokens
        db.set_budget(namespace="docs", max_tokens=40, period="day")
        lsn = db.lsn
        with pytest.raises(sv.BudgetExceeded, match=r"30 \+ 70 tokens > 40"):
            ns.sync(records(20, changed=set(range(10))))
        assert len(fn.texts) == 10 and db.lsn == lsn and ns.count() == 10
        with pytest.raises(sv.BudgetExceeded):
            ns.query_text("record 1 text and a long query of many words here")
        fresh = db.freshness("docs")[0]
        assert fresh.pending == 20 and fresh.source_changed == 20
        db.set_budget(namespace="docs", max_tokens=1000)
        r = ns.sync(records(20, changed=set(range(10))))
        assert r.embedded == 20 and db.freshness("docs")[0].pending == 0


def test_budget_use_warns_above_80_percent_and_is_critical_past_the_limit(tmp_path):
    with _open(tmp_path / "db") as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        db.set_budget(max_tokens=100, hard=False)
        ns.sync(records(28))                       # 84 tokens: 84 %
        finding = db.health().find("budget")[0]
        assert finding.severity == "warning" and finding.value == pytest.approx(0.84)
        alert = next(a for a in db.alerts() if a.rule == "budget_high")
        assert alert.state == "firing" and alert.severity == "warning"
        ns.sync(records(40))                       # soft: let through, 120 tokens
        assert db.health().find("budget")[0].severity == "critical"
        assert db.budgets()[0]["used_tokens"] == 120


def test_budgets_and_rate_limits_persist_and_can_be_removed(tmp_path):
    path = tmp_path / "db"
    with _open(path) as db:
        db.create_namespace("docs", dim=4)
        db.set_budget(namespace="docs", max_cost=2.5, period="month")
        db.set_rate_limit("docs", "query", 10, burst=20)
    with _open(path) as db:
        (b,) = db.budgets()
        assert (b["namespace"], b["max_cost"], b["period"], b["hard"]) == \
            ("docs", 2.5, "month", True)
        (lim,) = db.rate_limits()
        assert (lim.namespace, lim.op, lim.per_second, lim.burst) == ("docs", "query", 10, 20)
        db.set_rate_limit("docs", "query", 0)
        db.set_budget(namespace="docs", remove=True)
    with _open(path) as db:
        assert db.rate_limits() == [] and db.budgets() == []


def test_bad_budget_and_limit_arguments_are_typed_errors(tmp_path):
    with _open(tmp_path / "db") as db:
        with pytest.raises(sv.InvalidInput, match="neither"):
            db.set_budget(namespace="docs")
        with pytest.raises(sv.InvalidInput, match="period 'week'"):
            db.set_budget(max_tokens=1, period="week")
        with pytest.raises(sv.InvalidInput, match="max_tokens -1"):
            db.set_budget(max_tokens=-1)
        with pytest.raises(sv.InvalidInput, match="max_tokens"):     # does not fit msgpack
            db.set_budget(max_tokens=1 << 64)
        with pytest.raises(sv.InvalidInput, match="max_cost nan"):
            db.set_budget(max_cost=float("nan"))
        with pytest.raises(sv.InvalidInput, match="op 'read'"):
            db.set_rate_limit("docs", "read", 5)
        with pytest.raises(sv.InvalidInput, match="rate -5"):
            db.set_rate_limit("docs", "query", -5)
        with pytest.raises(sv.InvalidInput, match="burst 0.5"):
            db.set_rate_limit("docs", "query", 5, burst=0.5)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_100_per_second_bucket_admits_100_plus_minus_burst_each_second_over_5_s():
    clock = FakeClock()
    burst = 10
    bucket = TokenBucket(100, burst, clock=clock)
    admitted = [0] * 5
    for step in range(5000):                       # a request every millisecond for 5 s
        clock.t = step / 1000
        if bucket.try_take(1) == 0.0:
            admitted[step // 1000] += 1
    assert all(100 - burst <= n <= 100 + burst for n in admitted), admitted
    assert sum(admitted) == pytest.approx(500 + burst, abs=2)


def test_a_bucket_reports_the_wait_and_admits_a_batch_larger_than_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock)
    assert bucket.try_take(5) == 0.0
    assert bucket.try_take(1) == pytest.approx(0.1)
    clock.t = 0.5                                  # full again
    assert bucket.try_take(50) == 0.0              # granted, leaves the bucket in debt
    assert bucket.try_take(1) == pytest.approx((45 + 1) / 10)


def test_a_rate_limited_query_raises_with_retry_after_and_writes_too(tmp_path):
    with _open(tmp_path / "db") as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(["a"], np.ones((1, 4), np.float32))
        db.set_rate_limit("docs", "query", 0.5, burst=3)
        for _ in range(3):
            ns.query(np.ones(4, np.float32), k=1)
        with pytest.raises(sv.RateLimited) as info:
            ns.query(np.ones(4, np.float32), k=1)
        assert 0 < info.value.retry_after <= 2.0 and info.value.http_status == 429
        assert info.value.to_dict()["retry_after"] == info.value.retry_after
        db.set_rate_limit("docs", "write", 0.5, burst=2)
        ns.upsert(["b", "c"], np.ones((2, 4), np.float32))
        with pytest.raises(sv.RateLimited, match="write on namespace 'docs'"):
            ns.upsert(["d"], np.ones((1, 4), np.float32))
        assert ns.count() == 3


def test_a_waiting_limit_makes_the_sync_wait_instead_of_failing(tmp_path):
    with _open(tmp_path / "db") as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        db.set_rate_limit("docs", "embed", 200, burst=10)
        waited = []
        db.limiter.sleep = waited.append               # record the waits instead of sleeping
        r = ns.sync(records(30), batch_size=10)
        assert r.embedded == 30 and waited              # the 2nd and 3rd batch waited
