"""Scale-out on Ray: namespaces sharded over Ray actors, with the embedded API.

    import simplevector as sv
    cl = sv.cluster("./data", shards=4)        # starts or joins a local Ray
    docs = cl.create_namespace("docs", dim=384)
    docs.upsert(ids, X)                         # routed by a stable hash of each id
    hits = docs.query(q, k=10)                  # every shard's top-k, merged exactly

Each shard is a Ray actor (:class:`~simplevector._shard.ShardActor`) that owns an ordinary
embedded database under ``root/shard-<i>`` with its own WAL, checkpoints, snapshots and ops
layer. Ray restarts a dead actor (``max_restarts=-1``), which reopens its directory and
replays its WAL; tasks are never retried by Ray (``max_task_retries=0``): a write whose
shard died is reported to the caller, never silently sent twice or dropped.

Rules (README, "Scaling past one machine"):

- Routing: shard = blake2b-64 of the typed id (``b"s" + utf-8`` for str, ``b"i" +
  decimal`` for int) modulo the shard count; stable across processes and Python versions
  (not Python's salted ``hash``). The count is recorded in ``root/cluster.json``; another
  count raises :class:`ShardCountMismatch`.
- A write batch is validated whole by the coordinator (the embedded checks, with the
  user's row numbers) before any shard sees it; then every involved shard is pinged; then
  each shard applies its part as one embedded batch (all-or-nothing on that shard) and the
  call returns when every part is durable. If a shard dies after the ping, the parts of
  the other shards stay applied and :class:`ShardUnavailable` lists ``applied_ids`` and
  ``unknown_ids`` (retrying an upsert is idempotent).
- A query goes to every shard (ids are hashed, so a metadata filter can reach rows on any
  shard); each returns its exact top-k, and the coordinator merges by (distance, id) with
  int ids before str ids: deterministic whatever the shard count or arrival order.
- DDL (create/drop namespace) needs every shard up; a namespace is visible only when every
  shard has it. A shard failing mid-DDL leaves the namespace on some shards only: it stays
  invisible (``namespace()`` raises NamespaceNotFound naming the shards that hold it), and
  a retried ``create_namespace`` or ``drop_namespace`` completes the operation.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from simplevector.engine import validate
from simplevector.engine.errors import (ClosedError, InvalidInput, NamespaceExists,
                                        NamespaceNotFound, NotSupported, ShardCountMismatch,
                                        ShardUnavailable, SimpleVectorError, StorageError)
from simplevector.engine.filters import compile_filter
from simplevector.engine.limits import Limits
from simplevector.engine.snapshot import SnapshotInfo
from simplevector.engine.types import Hit, NamespaceInfo, VersionInfo
from simplevector.ops import cluster_health

from ._shard import ShardActor
from .cluster_files import (CLUSTER_MANIFEST, fsync_dir, read_cluster_manifest,
                            restore_cluster, write_json_atomic)

__all__ = ["cluster", "restore_cluster", "ClusterDatabase", "ClusterNamespace", "ShardInfo",
           "PartialResult", "WriteAck", "shard_of"]

#: seconds a call waits for a shard before it counts as unavailable
DEFAULT_TIMEOUT = 60.0
#: seconds the liveness check before a write or DDL waits
PING_TIMEOUT = 10.0


def _id_bytes(extid) -> bytes:
    if isinstance(extid, str):
        return b"s" + extid.encode("utf-8")
    return b"i" + str(int(extid)).encode("ascii")


def shard_of(extid, shards: int) -> int:
    """The shard that owns ``extid`` (str or int) in a cluster of ``shards`` shards."""
    digest = hashlib.blake2b(_id_bytes(extid), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def _tie_key(extid):
    return (0, extid, "") if isinstance(extid, int) else (1, 0, extid)


class WriteAck(int):
    """An upsert's acknowledgement: the highest LSN among the shards written (an ``int``,
    like the embedded upsert's LSN) with ``lsns``, shard index -> that shard's LSN."""

    lsns: dict

    def __new__(cls, lsns: dict):
        out = super().__new__(cls, max(lsns.values()) if lsns else 0)
        out.lsns = dict(lsns)
        return out


class PartialResult(list):
    """The result of ``query(..., partial=True)``: the usual list (of Hits, or of lists of
    Hits for a matrix) plus ``partial`` (True when some shard did not answer) and
    ``missing_shards`` (their indexes). Without ``partial=True`` a missing shard raises
    :class:`ShardUnavailable` instead: never a silently incomplete answer."""

    def __init__(self, items, missing_shards=()):
        super().__init__(items)
        self.missing_shards = tuple(missing_shards)
        self.partial = bool(self.missing_shards)


@dataclass(frozen=True)
class ShardInfo:
    """One shard as ``cl.shards()`` sees it. ``status`` is "up" or "down" (then ``error``
    says why and the measured fields are None); ``restarted``: Ray restarted the actor."""

    index: int
    path: str
    pid: int | None
    node: str | None
    count: int | None
    lsn: int | None
    status: str
    host: str | None = None
    restarted: bool | None = None
    namespaces: dict = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"index": self.index, "path": self.path, "pid": self.pid, "node": self.node,
                "count": self.count, "lsn": self.lsn, "status": self.status,
                "host": self.host, "restarted": self.restarted,
                "namespaces": dict(self.namespaces), "error": self.error}


@dataclass(frozen=True)
class ClusterSnapshotInfo(SnapshotInfo):
    """A cluster snapshot: the :class:`SnapshotInfo` fields (``lsn`` is the sum of the
    shards' LSNs, ``namespaces`` counts summed over shards, ``manifest_path`` the cluster
    manifest) plus every shard's own SnapshotInfo and LSN."""

    shards: tuple = ()
    shard_lsns: tuple = ()


def _ray():
    try:
        import ray
    except ImportError as e:        # pragma: no cover - the extra is in dev
        raise NotSupported("sv.cluster needs Ray: pip install 'simplevector[cluster]'") from e
    return ray


def _down_errors():
    ex = _ray().exceptions
    return (ex.RayActorError, ex.ActorUnavailableError, ex.GetTimeoutError,
            ex.WorkerCrashedError)


class _Down:
    """A shard's failed answer: ``reason`` is the Ray error's first line."""

    def __init__(self, reason: str):
        self.reason = reason


# -- calling shards (functions of the public attributes, shared with ClusterNamespace) --
def _check_open(cl):
    if cl.closed:
        raise ClosedError(f"the cluster at {cl.root} is closed",
                          hint="open it again with simplevector.cluster(root, shards=N)")


def _gather(cl, calls: dict, *, timeout=None) -> dict:
    """``calls``: shard -> (method, *args). Returns shard -> result, a
    SimpleVectorError the shard raised, or a :class:`_Down`."""
    ray = _ray()
    refs = {i: getattr(cl.actor(i), call[0]).remote(*call[1:])
            for i, call in calls.items()}
    deadline = time.monotonic() + (cl.timeout if timeout is None else timeout)
    out = {}
    for i, ref in refs.items():
        try:
            out[i] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause
            if isinstance(cause, SimpleVectorError):
                out[i] = cause
            elif isinstance(cause, _down_errors()):
                out[i] = _Down(str(cause).splitlines()[0])
            else:
                raise
        except _down_errors() as e:
            out[i] = _Down(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return out


def _raise_down(cl, answers: dict, what: str, **extra):
    down = sorted(i for i, a in answers.items() if isinstance(a, _Down))
    if down:
        i = down[0]
        raise ShardUnavailable(
            f"shard {i} ({cl.paths[i]}) is unavailable for {what}: "
            f"{answers[i].reason}" + (f"; {len(down)} shards down: {down}"
                                      if len(down) > 1 else ""),
            shard=i, shards=tuple(down), **extra)


def _results(cl, answers: dict, what: str) -> dict:
    """Raise the first shard error (typed error, then unavailable); else the answers."""
    _raise_down(cl, answers, what)
    for i in sorted(answers):
        if isinstance(answers[i], SimpleVectorError):
            raise answers[i]
    return answers


def _ping(cl, shards, what: str):
    pings = _gather(cl, {i: ("ping",) for i in shards}, timeout=PING_TIMEOUT)
    _results(cl, pings, what)


class ClusterDatabase:
    """The coordinator: routes writes, scatters queries, merges; see the module docstring."""

    def __init__(self, root, *, shards: int, ray_address=None, timeout=DEFAULT_TIMEOUT,
                 shard_cpus: float = 0.0, shard_options=None, **open_options):
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise InvalidInput(f"shards={shards!r} is not valid; expected an int >= 1")
        if shard_options is not None and (not isinstance(shard_options, (list, tuple))
                                          or len(shard_options) != shards
                                          or not all(isinstance(o, dict)
                                                     for o in shard_options)):
            raise InvalidInput(f"shard_options={shard_options!r} is not valid; expected a "
                               f"list of {shards} dicts of Ray actor options, one per shard")
        if not isinstance(root, (str, os.PathLike)):
            raise InvalidInput(f"root {root!r} must be a path")
        self.root = os.path.abspath(os.fspath(root))
        self.timeout = float(timeout)
        self.limits = open_options.get("limits") or Limits()
        self._closed = False
        self._ddl_lock = threading.Lock()
        self._configs: dict = {}
        self._check_manifest(shards)
        ray = _ray()
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        base = {"max_restarts": -1, "max_task_retries": 0, "max_concurrency": 16,
                "num_cpus": shard_cpus}
        remote = ray.remote(ShardActor)
        self.shard_count = shards
        self.paths = [os.path.join(self.root, f"shard-{i}") for i in range(shards)]
        self._actors = [remote.options(**{**base, **(shard_options[i] if shard_options
                                                     else {})})
                        .remote(i, self.paths[i], dict(open_options))
                        for i in range(shards)]
        answers = _gather(self, {i: ("ping",) for i in range(shards)},
                          timeout=max(self.timeout, 120.0))
        failed = {i: a for i, a in answers.items() if not isinstance(a, int)}
        if failed:
            self._kill_actors()
            i, why = next(iter(failed.items()))
            if isinstance(why, SimpleVectorError):
                raise why
            raise ShardUnavailable(f"shard {i} at {self.paths[i]} did not start: "
                                   f"{why.reason}", shard=i, shards=tuple(failed))

    # -- manifest -------------------------------------------------------------------------
    def _check_manifest(self, shards: int):
        manifest = read_cluster_manifest(self.root)
        if manifest is None:
            if os.path.isdir(self.root) and any(n.startswith("shard-")
                                                for n in os.listdir(self.root)):
                raise StorageError(f"{self.root} holds shard directories but no "
                                   f"{CLUSTER_MANIFEST}; expected a cluster root")
            os.makedirs(self.root, exist_ok=True)
            write_json_atomic(os.path.join(self.root, CLUSTER_MANIFEST), {
                "format": "simplevector-cluster", "manifest_version": 1, "shards": shards,
                "routing": "blake2b-64(typed id) mod shards",
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})
            fsync_dir(self.root)
        elif manifest["shards"] != shards:
            raise ShardCountMismatch(
                f"cluster root {self.root} has {manifest['shards']} shards; opened with "
                f"shards={shards}")

    # -- namespaces -----------------------------------------------------------------------
    def _catalogs(self, what: str) -> dict:
        every = range(self.shard_count)
        return _results(self, _gather(self, {i: ("catalog",) for i in every}), what)

    def _complete(self, catalogs: dict, name: str):
        """The config of ``name`` when every shard has it, else None; and who has it."""
        holders = [i for i, c in catalogs.items() if name in c]
        if len(holders) == len(catalogs):
            return catalogs[0][name], holders
        return None, holders

    def create_namespace(self, name, *, dim, metric="cosine", model=None, index="auto"):
        """Create ``name`` on every shard (all-or-nothing from the caller's view)."""
        _check_open(self)
        validate.namespace_name(name)
        dim = validate.dim_value(dim)
        model = validate.model_value(model)
        with self._ddl_lock:
            catalogs = self._catalogs(f"create_namespace({name!r})")
            config, holders = self._complete(catalogs, name)
            if config is not None:
                raise NamespaceExists(f"namespace {name!r} already exists",
                                      hint="drop it first, or choose another name")
            if holders:                     # leftovers of an interrupted create or drop
                drops = _gather(self, {i: ("drop_namespace", name) for i in holders})
                _results(self, drops, f"create_namespace({name!r})")
            call = ("create_namespace", name, dim, metric, model, index)
            first = _results(self, _gather(self, {0: call}), f"create_namespace({name!r})")[0]
            rest = _gather(self, {i: call for i in range(1, self.shard_count)})
            made = [0] + [i for i, a in rest.items() if isinstance(a, dict)]
            if len(made) < self.shard_count:
                _gather(self, {i: ("drop_namespace", name) for i in made})  # best effort
                _results(self, rest, f"create_namespace({name!r})")
            self._configs[name] = first
            return ClusterNamespace(self, name, first)

    def drop_namespace(self, name, version=None) -> None:
        """Drop ``name`` on every shard that has it. A shard failing midway leaves the
        namespace invisible; calling drop_namespace again finishes the drop."""
        _check_open(self)
        validate.namespace_name(name)
        if version is not None:
            validate.version_number(version)
            raise NotSupported("a cluster has no namespace versions yet; drop_namespace(name) "
                               f"drops every version (got version={version!r})")
        with self._ddl_lock:
            catalogs = self._catalogs(f"drop_namespace({name!r})")
            _, holders = self._complete(catalogs, name)
            if not holders:
                raise NamespaceNotFound(f"namespace {name!r} does not exist")
            self._configs.pop(name, None)
            drops = _gather(self, {i: ("drop_namespace", name) for i in holders})
            _results(self, drops, f"drop_namespace({name!r})")

    def namespace(self, name, version=None):
        """A handle on ``name`` (present on every shard)."""
        _check_open(self)
        validate.namespace_name(name)
        if version is not None:
            validate.version_number(version)
            raise NotSupported(f"a cluster has no namespace versions yet (got version="
                               f"{version!r}); use cl.namespace(name)")
        config, holders = self._complete(self._catalogs(f"namespace({name!r})"), name)
        if config is None:
            hint = None
            if holders:
                hint = (f"an interrupted create or drop left it on shards {holders} only; "
                        "call drop_namespace() or create_namespace() again to finish")
            raise NamespaceNotFound(f"namespace {name!r} does not exist", hint=hint)
        self._configs[name] = config
        return ClusterNamespace(self, name, config)

    def list_namespaces(self) -> list:
        """NamespaceInfo of every namespace present on every shard; counts summed."""
        _check_open(self)
        catalogs = self._catalogs("list_namespaces()")
        out = []
        for name in sorted(catalogs[0]):
            config, _ = self._complete(catalogs, name)
            if config is None:
                continue
            versions = []
            for v in config["versions"]:
                count = sum(next((w["count"] for w in c[name]["versions"]
                                  if w["version"] == v["version"]), 0)
                            for c in catalogs.values())
                versions.append(VersionInfo(**{**v, "count": count}))
            out.append(NamespaceInfo(name, config["live_version"], versions))
        return out

    # -- status ---------------------------------------------------------------------------
    def shards(self) -> list:
        """A :class:`ShardInfo` per shard (a down shard has status "down")."""
        _check_open(self)
        answers = _gather(self, {i: ("info",) for i in range(self.shard_count)},
                          timeout=PING_TIMEOUT)
        out = []
        for i in range(self.shard_count):
            a = answers[i]
            if isinstance(a, dict):
                out.append(ShardInfo(index=i, path=a["path"], pid=a["pid"], node=a["node"],
                                     count=a["count"], lsn=a["lsn"], status="up",
                                     host=a["host"], restarted=a["restarted"],
                                     namespaces=a["namespaces"]))
            else:
                reason = a.reason if isinstance(a, _Down) else str(a)
                out.append(ShardInfo(index=i, path=self.paths[i], pid=None, node=None,
                                     count=None, lsn=None, status="down", error=reason))
        return out

    def health(self):
        """One HealthReport: every shard's findings (ClusterFinding with ``shard``), plus
        ``shard_down`` and ``shard_balance`` (ops/cluster_health.py)."""
        _check_open(self)
        every = range(self.shard_count)
        reports = _gather(self, {i: ("health",) for i in every})
        infos = {s.index: s for s in self.shards()}
        ok = {i: r for i, r in reports.items()
              if not isinstance(r, (_Down, SimpleVectorError)) and infos[i].status == "up"}
        errors = {i: (r.reason if isinstance(r, _Down) else infos[i].error or str(r))
                  for i, r in reports.items() if i not in ok}
        counts = {i: infos[i].count for i in ok}
        return cluster_health.cluster_report(ok, counts, errors)

    def metrics_text(self) -> str:
        """Every shard's Prometheus text, each series labelled ``shard="<i>"``."""
        _check_open(self)
        answers = _gather(self, {i: ("metrics_text",) for i in range(self.shard_count)})
        texts = {i: a for i, a in answers.items() if isinstance(a, str)}
        counts = {s.index: s.count for s in self.shards() if s.status == "up"}
        up = {i: i in texts for i in range(self.shard_count)}
        return cluster_health.cluster_metrics_text(texts, up, counts)

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self, path) -> ClusterSnapshotInfo:
        """Snapshot every shard (each under ``path/shard-<i>``, each at its own LSN) and
        write one manifest with every shard's LSN; built under ``<path>.<pid>.tmp`` and
        renamed into place, so a failed snapshot leaves nothing."""
        from .cluster_files import take_cluster_snapshot
        _check_open(self)
        return take_cluster_snapshot(self, path)

    def snapshot_shards(self, tmp: str) -> dict:
        """Each shard's SnapshotInfo, taken into ``tmp/shard-<i>`` (for cluster_files)."""
        calls = {i: ("snapshot", os.path.join(tmp, f"shard-{i}"))
                 for i in range(self.shard_count)}
        return _results(self, _gather(self, calls, timeout=max(self.timeout, 600.0)),
                        "snapshot")

    # -- closing --------------------------------------------------------------------------
    def _kill_actors(self):
        ray = _ray()
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        if self._started_ray:
            ray.shutdown()

    def close(self) -> None:
        """Close every shard's database (checkpoint, release files), then end the actors
        (and Ray, when this cluster started it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        _gather(self, {i: ("close",) for i in range(self.shard_count)})
        self._kill_actors()

    @property
    def closed(self) -> bool:
        return self._closed

    def actor(self, index: int):
        """The Ray actor handle of shard ``index`` (for Ray-native work next to the shard)."""
        return self._actors[index]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<ClusterDatabase {self.root} shards={self.shard_count} {state}>"


class ClusterNamespace:
    """A namespace of a cluster: the embedded ``Namespace`` data API over every shard."""

    def __init__(self, cluster: ClusterDatabase, name: str, config: dict):
        self.cluster, self.name = cluster, name
        self.dim, self.metric = config["dim"], config["metric"]
        self.model, self.index = config["model"], config["index"]
        self.version = config["live_version"]

    def __repr__(self):
        return (f"<ClusterNamespace {self.name!r} dim={self.dim} metric={self.metric} "
                f"shards={self.cluster.shard_count}>")

    def _route(self, ids) -> dict:
        n = self.cluster.shard_count
        parts: dict = {}
        for row, extid in enumerate(ids):
            parts.setdefault(shard_of(extid, n), []).append(row)
        return parts

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, ids, vectors, metadata=None, documents=None) -> WriteAck:
        """Insert or replace rows on their shards; returns a :class:`WriteAck` once every
        involved shard has made its part durable."""
        cl = self.cluster
        _check_open(cl)
        ids = validate.id_list(ids)
        X = validate.vector_matrix(vectors, self.dim, zero_ok=self.metric != "cosine")
        if X.shape[0] != len(ids):
            raise InvalidInput(
                f"{len(ids)} ids for {X.shape[0]} vectors; expected one id per vector")
        metas = validate.metadata_list(metadata, len(ids))
        docs = validate.document_list(documents, len(ids))
        validate.upsert_limits(cl.limits, ids, X, metas, docs)
        parts = self._route(ids)
        what = f"upsert into {self.name!r}"
        _ping(cl, parts, what)
        calls = {}
        for s, rows in parts.items():
            m = [metas[r] for r in rows]
            d = [docs[r] for r in rows]
            calls[s] = ("upsert", self.name, [ids[r] for r in rows], X[rows],
                        None if m.count(None) == len(m) else m,
                        None if d.count(None) == len(d) else d)
        answers = _gather(cl, calls)
        applied = {s: a for s, a in answers.items() if isinstance(a, int)}
        if len(applied) < len(answers):
            done = tuple(ids[r] for s in sorted(applied) for r in parts[s])
            unknown = tuple(ids[r] for s in sorted(answers) if isinstance(answers[s], _Down)
                            for r in parts[s])
            _raise_down(cl, answers, what, applied_ids=done, unknown_ids=unknown)
            err = next(answers[s] for s in sorted(answers) if s not in applied)
            err.applied_ids = done          # only other shards' parts were applied
            raise err
        return WriteAck(applied)

    def delete(self, ids=None, where=None) -> int:
        """Delete by ids (on their shards), by filter (on every shard), or both; returns how
        many rows were deleted."""
        cl = self.cluster
        _check_open(cl)
        if ids is None and where is None:
            raise InvalidInput("delete needs ids, where, or both; got neither")
        if ids is not None:
            ids = validate.id_list(ids)
        if where is not None:
            compile_filter(where)
        if ids is None:
            calls = {s: ("delete", self.name, None, where) for s in range(cl.shard_count)}
            parts = {s: [] for s in calls}
        else:
            parts = self._route(ids)
            calls = {s: ("delete", self.name, [ids[r] for r in rows], where)
                     for s, rows in parts.items()}
        what = f"delete from {self.name!r}"
        _ping(cl, calls, what)
        answers = _gather(cl, calls)
        if ids is not None:
            done = tuple(ids[r] for s, a in answers.items() if isinstance(a, int)
                         for r in parts[s])
            unknown = tuple(ids[r] for s, a in answers.items() if isinstance(a, _Down)
                            for r in parts[s])
            _raise_down(cl, answers, what, applied_ids=done, unknown_ids=unknown)
        return sum(_results(cl, answers, what).values())

    # -- reads ----------------------------------------------------------------------------
    def count(self) -> int:
        """Rows stored on all shards (every shard must answer)."""
        cl = self.cluster
        _check_open(cl)
        answers = _gather(cl, {s: ("count", self.name) for s in range(cl.shard_count)})
        return sum(_results(cl, answers, f"count of {self.name!r}").values())

    def get(self, ids, include=("metadata", "documents")):
        """Records for ``ids`` in the same order (``None`` where not stored), fetched from
        the shards that own them."""
        cl = self.cluster
        _check_open(cl)
        single = isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool)
        ids = validate.id_list(ids, allow_duplicates=True)
        include = tuple(sorted(validate.include_value(include)))
        parts = self._route(ids)
        calls = {s: ("get", self.name, [ids[r] for r in rows], include)
                 for s, rows in parts.items()}
        answers = _results(cl, _gather(cl, calls), f"get from {self.name!r}")
        out = [None] * len(ids)
        for s, rows in parts.items():
            for r, record in zip(rows, answers[s]):
                out[r] = record
        return out[0] if single else out

    def query(self, vectors, k: int = 10, where=None, include=("metadata",), *,
              nprobe: int | None = None, refine: int | None = None, explain: bool = False,
              exact: bool = False, partial: bool = False):
        """The k nearest rows over all shards, as the embedded ``query`` returns them.

        Each shard returns its own exact top-k (under ``where``), and the coordinator keeps
        the k smallest by (distance, id): the same rows as one database holding them all.
        A shard that does not answer raises :class:`ShardUnavailable`, or with
        ``partial=True`` the other shards' merge comes back as a :class:`PartialResult`
        (``.partial``, ``.missing_shards``). ``explain=True`` returns ``(hits, plans)`` with
        one Plan per answering shard, by shard index.
        """
        cl = self.cluster
        _check_open(cl)
        k = validate.k_value(k)
        include = tuple(sorted(validate.include_value(include)))
        if nprobe is not None:
            nprobe = validate.positive_int(nprobe, "nprobe")
        if refine is not None:
            refine = validate.positive_int(refine, "refine")
        Q = validate.vector_matrix(vectors, self.dim, what="query vectors",
                                   zero_ok=self.metric != "cosine")
        single = np.ndim(vectors) == 1          # after validation: ragged input raised there
        if where is not None:
            compile_filter(where)
        call = ("query", self.name, Q, k, where, include, nprobe, refine, exact, explain)
        answers = _gather(cl, {s: call for s in range(cl.shard_count)})
        what = f"query of {self.name!r}"
        for s in sorted(answers):
            if isinstance(answers[s], SimpleVectorError):
                raise answers[s]
        missing = sorted(s for s, a in answers.items() if isinstance(a, _Down))
        if missing and (not partial or len(missing) == cl.shard_count):
            _raise_down(cl, answers, what)
        got = {s: a for s, a in answers.items() if s not in missing}
        merged = []
        for q in range(len(Q)):
            pool = [h for s in sorted(got) for h in got[s][0][q]]
            pool.sort(key=lambda h: (h.distance, _tie_key(h.id)))
            merged.append(pool[:k])
        out = merged[0] if single else merged
        if partial:
            out = PartialResult(out, missing)
        if explain:
            return out, [got[s][1] for s in sorted(got)]
        return out

    # -- index ----------------------------------------------------------------------------
    def build_index(self, spec=None) -> list:
        """Train (or re-train) every shard's index now; returns each shard's index_info."""
        cl = self.cluster
        _check_open(cl)
        calls = {s: ("build_index", self.name, spec) for s in range(cl.shard_count)}
        answers = _gather(cl, calls, timeout=max(cl.timeout, 600.0))
        return [a for _, a in sorted(_results(cl, answers, f"build_index of {self.name!r}")
                                     .items())]

    def index_info(self) -> list:
        """Every shard's ``index_info()``, by shard index."""
        cl = self.cluster
        _check_open(cl)
        answers = _gather(cl, {s: ("index_info", self.name) for s in range(cl.shard_count)})
        return [a for _, a in sorted(_results(cl, answers, f"index_info of {self.name!r}")
                                     .items())]


def cluster(root, *, shards: int, ray_address=None, timeout: float = DEFAULT_TIMEOUT,
            shard_cpus: float = 0.0, shard_options=None, **open_options) -> ClusterDatabase:
    """Open (creating if missing) the cluster rooted at ``root`` with ``shards`` shard
    actors; see :class:`ClusterDatabase`. ``open_options`` go to each shard's ``sv.open``.
    ``shard_options``: one dict of Ray actor options per shard, merged over the defaults
    (e.g. ``{"resources": {"node-a": 0.01}}`` or a ``NodeAffinitySchedulingStrategy`` to
    keep a shard on the node that holds its directory)."""
    return ClusterDatabase(root, shards=shards, ray_address=ray_address, timeout=timeout,
                           shard_cpus=shard_cpus, shard_options=shard_options,
                           **open_options)


__all__ += ["ClusterSnapshotInfo", "Hit", "ShardUnavailable"]
