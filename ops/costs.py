"""The cost ledger, cost reports and budgets.

Every embedding call made through the ops layer (``ns.sync``, ``ns.query_text``, a
migration's back-fill and dual-writes) is recorded in the ledger: calls, texts, tokens,
cost (tokens / 1000 * the function's ``price_per_1k_tokens``) and seconds, per hour (UTC),
namespace, model and operation (``sync``, ``query``, ``write``, ``migrate``). The ledger lives
in the ops store under ``ledger:<hour>:<namespace>:<model>:<op>``, written after each batch
of a sync or back-fill and at each checkpoint for queries, so it survives restarts.

Budgets (``db.set_budget``) cap tokens and/or cost per ``hour``, ``day``, ``month`` (UTC
calendar periods) or ``total``, for one namespace, one model, both or everything. They are
checked before the model is called, with the function's ``count_tokens`` estimate: past
the limit a ``hard`` budget raises BudgetExceeded (nothing embedded, nothing written); a
soft one lets the call through. The health report grades each budget's use (finding
``budget``: warning above 80 %, critical above 100 %) and the default alert rule
``budget_high`` fires from it.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import asdict, dataclass, field

from simplevector.engine.errors import BudgetExceeded, InvalidInput

from .histogram import parse_window

__all__ = ["Ledger", "CostLine", "CostReport", "Budget", "PERIODS"]

LEDGER_PREFIX = "ledger:"
BUDGET_PREFIX = "budget:"
PERIODS = ("hour", "day", "month", "total")
FIELDS = ("calls", "texts", "tokens", "cost", "seconds", "cpu_seconds")


def _hour(ts: float) -> int:
    return int(ts // 3600)


def period_start(period: str, now: float) -> float:
    """Epoch seconds at which the current ``period`` began (UTC)."""
    if period == "total":
        return 0.0
    if period == "hour":
        return _hour(now) * 3600.0
    if period == "day":
        return (now // 86400) * 86400.0
    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass
class CostLine:
    """Costs of one (namespace, model) over the report's window. ``embed_seconds`` /
    ``embed_cpu_seconds``: wall and this-process CPU (thread) time of the embedding calls.
    ``queries`` and ``op_seconds`` (wall seconds spent per engine operation, from the
    latency histograms) are per namespace, repeated on each of its models' lines;
    ``stored_bytes``: raw vector bytes of the namespace's versions with this model."""

    namespace: str
    model: str | None
    embedding_calls: int = 0
    texts: int = 0
    tokens: int = 0
    cost: float = 0.0
    embed_seconds: float = 0.0
    embed_cpu_seconds: float = 0.0
    by_op: dict = field(default_factory=dict)
    queries: int = 0
    op_seconds: dict = field(default_factory=dict)
    stored_bytes: int = 0
    cost_per_query: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CostReport:
    """``db.cost(window)``: one CostLine per (namespace, model) and the totals."""

    window: float | None
    lines: list
    tokens: int
    cost: float
    embedding_calls: int
    queries: int
    stored_bytes: int
    at: float

    def line(self, namespace: str, model: str | None = None) -> CostLine | None:
        for item in self.lines:
            if item.namespace == namespace and (model is None or item.model == model):
                return item
        return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines"] = [item.to_dict() for item in self.lines]
        return out


#: Largest budget value: it is stored as msgpack (a bigger int does not pack).
_MAX_BUDGET = (1 << 63) - 1


@dataclass(frozen=True)
class Budget:
    """At most ``max_tokens`` and/or ``max_cost`` per ``period`` for ``namespace`` and
    ``model`` (None: any). ``hard``: refuse the call past the limit (else only alert)."""

    namespace: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    period: str = "day"
    hard: bool = True

    def __post_init__(self):
        for name in ("namespace", "model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or ":" in value):
                raise InvalidInput(f"{name} {value!r} is not valid; expected None (any) or a "
                                   "non-empty name without ':'")
        if self.max_tokens is None and self.max_cost is None:
            raise InvalidInput("a budget needs max_tokens, max_cost or both; got neither")
        for name in ("max_tokens", "max_cost"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float)) or value < 0
                                      or value > _MAX_BUDGET or value != value):
                raise InvalidInput(f"{name} {value!r} is not valid; expected a number from 0 "
                                   f"to {_MAX_BUDGET} (2**63 - 1)")
        if self.period not in PERIODS:
            raise InvalidInput(f"period {self.period!r} is not valid; expected one of "
                               f"{', '.join(PERIODS)}")

    @property
    def key(self) -> str:
        return f"{BUDGET_PREFIX}{self.namespace or '*'}:{self.model or '*'}"

    def matches(self, namespace: str, model: str | None) -> bool:
        return ((self.namespace is None or self.namespace == namespace)
                and (self.model is None or self.model == model))

    def to_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """The persisted ledger and the budgets of one database (see the module docstring)."""

    def __init__(self, store, clock=time.time):
        self.store = store
        self.clock = clock
        self.entries: dict = {}         # (hour, ns, model, op) -> {field: value}
        self.dirty: set = set()
        self.budgets: dict = {}         # key -> Budget
        self.lock = threading.Lock()

    def load(self) -> None:
        for key, value in self.store.items(LEDGER_PREFIX):
            hour, ns, model, op = _split(key)
            self.entries[(hour, ns, model, op)] = value
        for key, value in self.store.items(BUDGET_PREFIX):
            if value is not None:
                self.budgets[key] = Budget(**value)

    # -- recording -------------------------------------------------------------------------
    def record(self, namespace: str, model: str | None, op: str, *, calls: int = 1,
               texts: int = 0, tokens: int = 0, cost: float = 0.0, seconds: float = 0.0,
               cpu_seconds: float = 0.0, flush: bool = True, writable: bool = True) -> None:
        key = (_hour(self.clock()), namespace, model or "-", op)
        with self.lock:
            entry = self.entries.setdefault(key, dict.fromkeys(FIELDS, 0))
            for name, value in zip(FIELDS, (calls, texts, tokens, cost, seconds, cpu_seconds)):
                entry[name] = entry.get(name, 0) + value
            self.dirty.add(key)
        if flush and writable:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            items = [(k, dict(self.entries[k])) for k in self.dirty]
            self.dirty.clear()
        for (hour, ns, model, op), value in items:
            self.store.put(f"{LEDGER_PREFIX}{hour:08d}:{ns}:{model}:{op}", value)

    def totals(self, since: float = 0.0, namespace=None, model=None) -> dict:
        """Summed fields (and ``by_op`` tokens) of entries from ``since`` (epoch s) on."""
        first = _hour(since) if since else 0
        out = dict.fromkeys(FIELDS, 0)
        out["by_op"] = {}
        with self.lock:
            items = list(self.entries.items())
        for (hour, ns, mdl, op), value in items:
            if hour < first or (namespace is not None and ns != namespace) or \
                    (model is not None and mdl != model):
                continue
            for name in FIELDS:
                out[name] += value.get(name, 0)
            slot = out["by_op"].setdefault(op, {"calls": 0, "texts": 0, "tokens": 0,
                                                "cost": 0.0})
            for name in ("calls", "texts", "tokens", "cost"):
                slot[name] += value[name]
        return out

    def keys(self, since: float = 0.0) -> list:
        first = _hour(since) if since else 0
        with self.lock:
            return sorted({(ns, None if mdl == "-" else mdl)
                           for (hour, ns, mdl, _op) in self.entries if hour >= first},
                          key=lambda k: (k[0], k[1] or ""))

    def embed_rate(self, namespace: str | None = None):
        """Texts per second of embedding measured over the whole ledger (None: no data)."""
        t = self.totals(0.0, namespace)
        return t["texts"] / t["seconds"] if t["seconds"] > 0 and t["texts"] else None

    def hourly(self, namespace=None, hours: int = 25) -> list:
        """(hour, tokens, cost) of the last ``hours`` hours, oldest first (0 where none)."""
        now = _hour(self.clock())
        out = {h: [0, 0.0] for h in range(now - hours + 1, now + 1)}
        with self.lock:
            items = list(self.entries.items())
        for (hour, ns, _m, _op), value in items:
            if hour in out and (namespace is None or ns == namespace):
                out[hour][0] += value["tokens"]
                out[hour][1] += value["cost"]
        return [(h, t, c) for h, (t, c) in sorted(out.items())]

    def spike_ratio(self, namespace=None):
        """Tokens (or cost, when priced) of the current hour over the mean of the 24 hours
        before it; None without history."""
        rows = self.hourly(namespace, 25)
        *before, (_, tokens, cost) = rows
        priced = any(c for _, _, c in before) or cost
        base = [c if priced else t for _, t, c in before]
        mean = sum(base) / len(base) if base else 0
        if mean <= 0:
            return None
        return (cost if priced else tokens) / mean

    # -- budgets ---------------------------------------------------------------------------
    def set_budget(self, budget: Budget, *, remove: bool = False) -> None:
        if remove:
            self.store.put(budget.key, None)
            self.budgets.pop(budget.key, None)
            return
        self.store.put(budget.key, budget.to_dict())
        self.budgets[budget.key] = budget

    def budget_usage(self, budget: Budget) -> dict:
        now = self.clock()
        used = self.totals(period_start(budget.period, now), budget.namespace, budget.model)
        ratios = []
        if budget.max_tokens is not None:
            ratios.append(used["tokens"] / budget.max_tokens if budget.max_tokens else
                          (float("inf") if used["tokens"] else 0.0))
        if budget.max_cost is not None:
            ratios.append(used["cost"] / budget.max_cost if budget.max_cost else
                          (float("inf") if used["cost"] else 0.0))
        return {**budget.to_dict(), "used_tokens": used["tokens"], "used_cost": used["cost"],
                "used_ratio": max(ratios)}

    def check(self, namespace: str, model: str | None, tokens: int, cost: float) -> None:
        """Raise BudgetExceeded if ``tokens``/``cost`` more would pass a hard budget."""
        for budget in list(self.budgets.values()):
            if not budget.hard or not budget.matches(namespace, model):
                continue
            usage = self.budget_usage(budget)
            over = []
            if budget.max_tokens is not None and usage["used_tokens"] + tokens > budget.max_tokens:
                over.append(f"{usage['used_tokens']} + {tokens} tokens > {budget.max_tokens}")
            if budget.max_cost is not None and usage["used_cost"] + cost > budget.max_cost:
                over.append(f"{usage['used_cost']:.6g} + {cost:.6g} cost > {budget.max_cost:g}")
            if over:
                scope = (f"namespace {budget.namespace or '*'!s}, model "
                         f"{budget.model or '*'!s}")
                raise BudgetExceeded(f"the {budget.period} budget of {scope} would be "
                                     f"exceeded ({'; '.join(over)}); nothing was embedded "
                                     "or written")


def _split(key: str):
    _, hour, ns, model, op = key.split(":")      # names and models hold no ":"
    return int(hour), ns, model, op


def window_seconds(window):
    try:
        return parse_window(window)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
