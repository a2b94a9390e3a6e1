"""The ``simplevector`` admin command line (click).

Each command is thin: parse the arguments, call the public library, format the result.
``--db PATH`` (env SIMPLEVECTOR_DB) names the database on every command that needs one;
``--json`` switches a command's output from an aligned table to JSON. A library error
(:class:`SimpleVectorError`) prints one line ``error: <message> (hint: ...)`` on stderr and
exits 1; usage errors exit 2; ``simplevector --debug ...`` shows the traceback instead.

The database is opened with the background checkpointer and background index training
off, and closed (which checkpoints) when the command ends. Commands that only read open it read-only, so they
also work while another process (a server, a long import) holds the write lock.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time

import click
import numpy as np

import simplevector as sv
from simplevector._output import dumps, emit, output_option

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"])
DEFAULT_DB = "./simplevector-data"


# -- shared options and helpers -----------------------------------------------------------------
def db_option(default: str = DEFAULT_DB, envvar: str | None = "SIMPLEVECTOR_DB"):
    """``--db PATH``: the database directory; arrives as ``db_path``."""
    return click.option(
        "--db", "db_path", default=default, envvar=envvar, show_default=True, show_envvar=True,
        type=click.Path(file_okay=False, dir_okay=True),
        help="Database directory.")


@contextlib.contextmanager
def open_db(path: str, *, readonly: bool = False):
    """The database at ``path``, closed (and checkpointed, for a writer) on exit."""
    if readonly and not os.path.isdir(path):
        raise sv.StorageError(f"no SimpleVector database at {os.path.abspath(path)}",
                              hint="create one with `simplevector init --db PATH`")
    # A CLI process lives for one command: no background checkpointer, and no background
    # index training (close() would wait for it, and a stopped build is thrown away).
    db = sv.Database(path, readonly=readonly, checkpoint_interval=0, auto_index=False)
    try:
        yield db
    finally:
        db.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class _MainGroup(click.Group):
    """The root group: turns library errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except sv.SimpleVectorError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(1)


def _json_arg(value: str, param: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{value!r} is not valid JSON: {e}", param_hint=param)


def _ns_info(db, name: str):
    for info in db.list_namespaces():
        if info.name == name:
            return info
    raise sv.NamespaceNotFound(f"namespace {name!r} does not exist")


def _short_vector(vec, shown: int = 4) -> str:
    if vec is None:
        return "-"
    head = ", ".join(f"{x:.4g}" for x in vec[:shown])
    more = f", ... ({len(vec)} values)" if len(vec) > shown else ""
    return f"[{head}{more}]"


version_option = click.option("--version", "version", type=click.IntRange(min=1), default=None,
                              help="Namespace version (default: the live one).")


# -- the root group ------------------------------------------------------------------------------
@click.group(cls=_MainGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--debug", is_flag=True, default=False,
              help="Show the full traceback of a library error.")
@click.version_option(sv.__version__, "-V", "--version", prog_name="simplevector")
def main(debug):
    """SimpleVector admin commands: namespaces, import/export, queries, the change feed."""


@main.command(context_settings=CONTEXT_SETTINGS)
@db_option()
@output_option
def init(db_path, as_json):
    """Create the database directory (or open an existing one) and print it."""
    with open_db(db_path) as db:
        info = db.info()
    emit({"path": info["path"], "format_version": info["format_version"],
          "lsn": info["lsn"]}, as_json)


@main.command(context_settings=CONTEXT_SETTINGS)
@db_option()
@output_option
def info(db_path, as_json):
    """Positions, sizes and per-namespace row counts."""
    with open_db(db_path, readonly=True) as db:
        data = db.info()
        namespaces = db.list_namespaces()
    rows = [{"namespace": ns.name, "live_version": ns.live_version,
             "versions": len(ns.versions),
             "count": next((v.count for v in ns.versions if v.live), 0)} for ns in namespaces]
    if as_json:
        emit({**data, "namespace_counts": rows}, True)
        return
    emit(data, False)
    if rows:
        click.echo()
        emit(rows, False, columns=["namespace", "live_version", "versions", "count"])


# -- namespaces -----------------------------------------------------------------------------------
@main.group(context_settings=CONTEXT_SETTINGS)
def ns():
    """Create, list, version, promote and drop namespaces."""


@ns.command("create", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--dim", type=int, required=True, help="Vector length.")
@click.option("--metric", default="cosine", show_default=True, help="cosine, l2 or ip.")
@click.option("--model", default=None, help="Embedding model as name@x.y.z.")
@click.option("--index", default="auto", show_default=True, help="Index spec: auto, Flat, IVF<n>,Flat, IVF<n>,PQ<m>x8[,Refine<r>].")
@db_option()
@output_option
def ns_create(name, dim, metric, model, index, db_path, as_json):
    """Create namespace NAME with version 1 live."""
    with open_db(db_path) as db:
        db.create_namespace(name, dim=dim, metric=metric, model=model, index=index)
        info = _ns_info(db, name)
    if as_json:
        emit(info, True)
        return
    v = info.versions[0]
    click.echo(f"created namespace {name} v{v.version} (dim={v.dim}, metric={v.metric}, "
               f"model={v.model or '-'}, index={v.index})")


@ns.command("list", context_settings=CONTEXT_SETTINGS)
@db_option()
@output_option
def ns_list(db_path, as_json):
    """List namespaces with their live version."""
    with open_db(db_path, readonly=True) as db:
        namespaces = db.list_namespaces()
    if as_json:
        emit(namespaces, True)
        return
    rows = []
    for info in namespaces:
        live = next((v for v in info.versions if v.live), None)
        rows.append({"name": info.name, "live_version": info.live_version,
                     "versions": len(info.versions),
                     "dim": live.dim if live else None, "metric": live.metric if live else None,
                     "model": live.model if live else None,
                     "count": live.count if live else None})
    emit(rows, False, columns=["name", "live_version", "versions", "dim", "metric", "model",
                               "count"], empty="no namespaces")


@ns.command("versions", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@db_option()
@output_option
def ns_versions(name, db_path, as_json):
    """List the versions of NAME: dim, metric, model, index, count, live."""
    with open_db(db_path, readonly=True) as db:
        info = _ns_info(db, name)
    emit(info.versions, as_json,
         columns=["version", "dim", "metric", "model", "index", "count", "live"])


@ns.command("create-version", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--dim", type=int, default=None, help="Vector length (default: inherited).")
@click.option("--metric", default=None, help="cosine, l2 or ip (default: inherited).")
@click.option("--model", default=None, help="Embedding model name@x.y.z (default: inherited).")
@click.option("--index", default=None, help="Index spec (default: inherited).")
@db_option()
@output_option
def ns_create_version(name, dim, metric, model, index, db_path, as_json):
    """Create the next version of NAME (not live; promote it when it is filled)."""
    with open_db(db_path) as db:
        handle = db.create_version(name, dim=dim, metric=metric, model=model, index=index)
        number = handle.version
        info = _ns_info(db, name)
    version = next(v for v in info.versions if v.version == number)
    if as_json:
        emit(version, True)
        return
    click.echo(f"created {name} v{version.version} (dim={version.dim}, "
               f"metric={version.metric}, model={version.model or '-'}, index={version.index}); "
               f"not live: `simplevector ns promote {name} {version.version}`")


@ns.command("promote", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@db_option()
@output_option
def ns_promote(name, version, db_path, as_json):
    """Point NAME at VERSION (atomic)."""
    with open_db(db_path) as db:
        db.promote(name, version)
    if as_json:
        emit({"name": name, "live_version": version}, True)
    else:
        click.echo(f"{name} now serves v{version}")


@ns.command("drop", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@version_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option()
@output_option
def ns_drop(name, version, yes, db_path, as_json):
    """Drop NAME with all its versions, or one version that is not live."""
    with open_db(db_path) as db:
        info = _ns_info(db, name)
        if not yes:
            what = (f"version {version} of namespace {name!r}" if version is not None else
                    f"namespace {name!r} with {len(info.versions)} version(s) and "
                    f"{sum(v.count for v in info.versions)} row(s)")
            click.confirm(f"drop {what}?", abort=True, err=True)
        db.drop_namespace(name, version)
    if as_json:
        emit({"dropped": name, "version": version}, True)
    else:
        click.echo(f"dropped {name}" + (f" v{version}" if version is not None else ""))


# -- reading --------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.argument("ids", nargs=-1, required=True)
@click.option("--int-ids", is_flag=True, help="Parse the ids as integers.")
@click.option("--vectors", "with_vectors", is_flag=True, help="Include the vectors.")
@version_option
@db_option()
@output_option
def get(namespace, ids, int_ids, with_vectors, version, db_path, as_json):
    """Print the stored rows with the given ids (str unless --int-ids)."""
    if int_ids:
        try:
            ids = [int(i) for i in ids]
        except ValueError as e:
            raise click.BadParameter(f"{e}; --int-ids expects integers", param_hint="IDS")
    include = ("metadata", "documents") + (("vectors",) if with_vectors else ())
    with open_db(db_path, readonly=True) as db:
        records = db.namespace(namespace, version).get(list(ids), include=include)
    if as_json:
        emit(records, True)
        return
    rows = []
    for extid, rec in zip(ids, records):
        row = {"id": extid, "found": rec is not None,
               "metadata": rec.metadata if rec else None,
               "document": rec.document if rec else None}
        if with_vectors:
            row["vector"] = _short_vector(rec.vector if rec else None)
        rows.append(row)
    cols = ["id", "found", "metadata", "document"] + (["vector"] if with_vectors else [])
    emit(rows, False, columns=cols)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.option("--vector", "vector_json", default=None, help="Query vector as a JSON list.")
@click.option("--npy", "npy_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take the query vector from this .npy file ...")
@click.option("--row", type=click.IntRange(min=0), default=None,
              help="... at this row (default 0).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of neighbours.")
@click.option("--where", "where_json", default=None, help='Metadata filter as JSON, e.g. '
              '\'{"lang": "en"}\'.')
@version_option
@db_option()
@output_option
def query(namespace, vector_json, npy_file, row, k, where_json, version, db_path, as_json):
    """The k nearest rows to one vector: id, distance, metadata."""
    if (vector_json is None) == (npy_file is None):
        raise click.UsageError("give exactly one of --vector JSON or --npy FILE")
    if row is not None and npy_file is None:
        raise click.UsageError("--row only applies with --npy FILE")
    if vector_json is not None:
        vector = _json_arg(vector_json, "--vector")
    else:
        X = np.load(npy_file, mmap_mode="r")
        row = row or 0
        if X.ndim != 2 or not 0 <= row < X.shape[0]:
            raise click.BadParameter(f"row {row} is not in {npy_file} of shape {X.shape}",
                                     param_hint="--row")
        vector = np.asarray(X[row])
    where = _json_arg(where_json, "--where") if where_json is not None else None
    with open_db(db_path, readonly=True) as db:
        hits = db.namespace(namespace, version).query(
            vector, k=k, where=where, include=("metadata", "documents"))
    if as_json:
        emit(hits, True)
        return
    rows = [{"rank": i + 1, "id": h.id, "distance": h.distance, "metadata": h.metadata,
             "document": h.document} for i, h in enumerate(hits)]
    cols = ["rank", "id", "distance", "metadata"]
    if any(h.document is not None for h in hits):
        cols.append("document")
    emit(rows, False, columns=cols, empty="no results")


# -- import / export ------------------------------------------------------------------------------
def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _jsonl_batches(path: str, batch_size: int, what: str, check):
    """Lists of ``batch_size`` parsed JSON lines; ``check(value)`` returns an error or None."""
    with open(path, encoding="utf-8") as f:
        batch = []
        for lineno, line in enumerate(f, 1):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise sv.InvalidInput(f"{path} line {lineno} is not valid JSON: {e.msg}") from e
            problem = check(value)
            if problem:
                raise sv.InvalidInput(f"{path} line {lineno}: {what} {problem}")
            batch.append(value)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _check_id(v):
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        return f"{v!r} is not a str or int id"
    return None


def _check_meta(v):
    return None if v is None or isinstance(v, dict) else f"{v!r} is not a JSON object (or null)"


def _check_doc(v):
    return None if v is None or isinstance(v, str) else f"{v!r} is not a JSON string (or null)"


@main.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.argument("npy_file", metavar="FILE.npy", type=click.Path(exists=True, dir_okay=False))
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one id (str or int) per line. Default: row numbers.")
@click.option("--metadata", "meta_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one JSON object (or null) per line.")
@click.option("--documents", "docs_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one JSON string (or null) per line.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows per upsert (one WAL record each).")
@click.option("--create", is_flag=True,
              help="Create the namespace if it does not exist (with --dim/--metric/...).")
@click.option("--dim", type=int, default=None, help="With --create: dim (default: the file's).")
@click.option("--metric", default=None, help="With --create: cosine (default), l2 or ip.")
@click.option("--model", default=None, help="With --create: embedding model name@x.y.z.")
@click.option("--index", default=None, help="With --create: index spec (default auto).")
@version_option
@db_option()
@output_option
def import_(namespace, npy_file, ids_file, meta_file, docs_file, batch_size, create, dim,
            metric, model, index, version, db_path, as_json):
    """Upsert the rows of FILE.npy (memory-mapped) into NAMESPACE, in batches."""
    if not create and any(v is not None for v in (dim, metric, model, index)):
        raise click.UsageError("--dim/--metric/--model/--index only apply with --create")
    X = np.load(npy_file, mmap_mode="r")
    if X.ndim != 2:
        raise click.BadParameter(f"{npy_file} has shape {X.shape}; expected (rows, dim)",
                                 param_hint="FILE.npy")
    n = X.shape[0]
    for path in (ids_file, meta_file, docs_file):
        if path is not None and _count_lines(path) != n:
            raise click.BadParameter(f"{path} has {_count_lines(path)} lines for {n} vectors "
                                     f"in {npy_file}; expected {n}")
    streams = {}
    if ids_file:
        streams["ids"] = _jsonl_batches(ids_file, batch_size, "id", _check_id)
    if meta_file:
        streams["metadata"] = _jsonl_batches(meta_file, batch_size, "metadata", _check_meta)
    if docs_file:
        streams["documents"] = _jsonl_batches(docs_file, batch_size, "document", _check_doc)

    with open_db(db_path) as db:
        if create and not any(i.name == namespace for i in db.list_namespaces()):
            db.create_namespace(namespace, dim=dim if dim is not None else X.shape[1],
                                metric=metric or "cosine", model=model, index=index or "auto")
        ns_ = db.namespace(namespace, version)
        done = 0
        t0 = time.perf_counter()
        with click.progressbar(length=n, label=f"importing {namespace}",
                               file=sys.stderr) as bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                parts = {key: next(stream) for key, stream in streams.items()}
                ids = parts.pop("ids", None)
                if ids is None:
                    ids = list(range(start, stop))
                ns_.upsert(ids, np.asarray(X[start:stop]), **parts)
                done += stop - start
                bar.update(stop - start)
        seconds = time.perf_counter() - t0
        number = ns_.version
    rate = done / seconds if seconds > 0 else float("inf")
    result = {"namespace": namespace, "version": number, "rows": done,
              "seconds": round(seconds, 3), "rows_per_second": round(rate, 1)}
    if as_json:
        emit(result, True)
    else:
        click.echo(f"imported {done} rows into {namespace} v{number} in {seconds:.2f} s "
                   f"({rate:,.0f} rows/s)")


def _live_ids(db, namespace: str, version):
    """Ids of the stored rows in insertion order, and the version's status."""
    return db.namespace(namespace, version).ids(), db.version_status(namespace, version)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.argument("out_prefix")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows read per batch.")
@version_option
@db_option()
@output_option
def export(namespace, out_prefix, batch_size, version, db_path, as_json):
    """Write OUT_PREFIX.npy, .ids.jsonl, .metadata.jsonl (and .documents.jsonl when there are
    documents): the input of `simplevector import`."""
    if out_prefix.endswith(".npy"):
        out_prefix = out_prefix[:-4]
    t0 = time.perf_counter()
    paths = {"vectors": out_prefix + ".npy", "ids": out_prefix + ".ids.jsonl",
             "metadata": out_prefix + ".metadata.jsonl"}
    docs_path = out_prefix + ".documents.jsonl"
    with open_db(db_path, readonly=True) as db:
        handle = db.namespace(namespace, version)
        ids, config = _live_ids(db, namespace, version)
        n = len(ids)
        out = np.lib.format.open_memmap(paths["vectors"], mode="w+", dtype=np.float32,
                                        shape=(n, config.dim))
        written = 0
        any_docs = False
        with open(paths["ids"], "w", encoding="utf-8") as fi, \
                open(paths["metadata"], "w", encoding="utf-8") as fm, \
                open(docs_path, "w", encoding="utf-8") as fd:
            for start in range(0, n, batch_size):
                batch = ids[start:start + batch_size]
                records = handle.get(batch, include=("metadata", "documents", "vectors"))
                for rec in records:
                    if rec is None:         # deleted by a writer since the ids were listed
                        continue
                    out[written] = rec.vector
                    written += 1
                    fi.write(dumps(rec.id) + "\n")
                    fm.write(dumps(rec.metadata) + "\n")
                    fd.write(dumps(rec.document) + "\n")
                    any_docs = any_docs or rec.document is not None
        out.flush()
        del out
    if written < n:                         # rows vanished concurrently: shrink the .npy
        np.save(paths["vectors"], np.load(paths["vectors"], mmap_mode="r")[:written].copy())
    if any_docs:
        paths["documents"] = docs_path
    else:
        os.remove(docs_path)
    seconds = time.perf_counter() - t0
    result = {"namespace": namespace, "version": config.version, "rows": written,
              "seconds": round(seconds, 3), "files": paths}
    if as_json:
        emit(result, True)
    else:
        click.echo(f"exported {written} rows of {namespace} v{config.version} in "
                   f"{seconds:.2f} s to " + ", ".join(paths.values()))


# -- the write-ahead log --------------------------------------------------------------------------
@main.group(context_settings=CONTEXT_SETTINGS)
def wal():
    """Read the write-ahead log (the change feed)."""


@wal.command("tail", context_settings=CONTEXT_SETTINGS)
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="Show the first changes after this LSN (default: the last changes).")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Number of changes.")
@db_option()
@output_option
def wal_tail(since, limit, db_path, as_json):
    """The last LIMIT committed changes, or the first LIMIT after --since."""
    with open_db(db_path, readonly=True) as db:
        if since is None:
            changes = list(collections.deque(db.changes(0), maxlen=limit))
        else:
            changes = []
            for change in db.changes(since):
                changes.append(change)
                if len(changes) == limit:
                    break
    if as_json:
        emit([{**c.to_dict(), "n_ids": len(c.ids)} for c in changes], True)
        return
    rows = []
    for c in changes:
        first = ", ".join(str(i) for i in c.ids[:3]) + (", ..." if len(c.ids) > 3 else "")
        rows.append({"lsn": c.lsn, "op": c.op, "namespace": c.namespace,
                     "version": c.version, "ids": len(c.ids), "first_ids": first or None})
    emit(rows, False, columns=["lsn", "op", "namespace", "version", "ids", "first_ids"],
         empty="no changes")


# -- the demo -------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@db_option(default="./simplevector-demo", envvar=None)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Load only the first N words (default: all 400,000).")
@click.option("--fresh", is_flag=True, help="Drop the demo namespace and load it again.")
def demo(db_path, limit, fresh):
    """Load GloVe 6B 50-d word vectors and show queries, a filter, an analogy and a reopen."""
    from simplevector import demo as demo_module
    demo_module.run(db_path, limit=limit, fresh=fresh)


# -- indexes -----------------------------------------------------------------------------------
@main.group(context_settings=CONTEXT_SETTINGS)
def index():
    """Build and inspect a namespace's index (Flat, IVF, IVF-PQ)."""


@index.command("build", context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.option("--spec", default=None,
              help="Index spec, e.g. IVF1024,PQ25x8,Refine4 (default: the configured one; "
                   "'auto' picks nlist/m/refine for the size).")
@version_option
@db_option()
@output_option
def index_build(namespace, spec, version, db_path, as_json):
    """Train NAMESPACE's index now and persist it (reads continue meanwhile)."""
    t0 = time.perf_counter()
    with open_db(db_path) as db:
        info = db.namespace(namespace, version).build_index(spec)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    emit(info, as_json)


@index.command("info", context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@version_option
@db_option()
@output_option
def index_info(namespace, version, db_path, as_json):
    """The configured and active index spec, training time, list sizes, code size."""
    with open_db(db_path, readonly=True) as db:
        info = db.namespace(namespace, version).index_info()
    emit(info, as_json)


def _register_ops_commands():
    from simplevector.cli_ops import register
    register(main)


_register_ops_commands()


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
