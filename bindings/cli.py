"""The ``simplevector`` admin command line (click).

Each command is thin: parse the arguments, call the public library, format the result.
The conventions every command shares live in :mod:`simplevector._cli`: ``--db PATH`` (env
SIMPLEVECTOR_DB), ``--json``, one way to open the database (no background checkpointer or
index training; closed, which checkpoints, when the command ends; read-only for commands
that only read, so they work while another process holds the write lock), and errors: a
library error (:class:`SimpleVectorError`) prints one line ``error: <message> (hint: ...)``
on stderr and exits 1; usage errors exit 2; ``simplevector --debug ...`` shows the traceback.
Import and export are :mod:`simplevector.transfer`; the ops commands are in ``cli_ops``,
``serve`` in ``cli_server``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

import click
import numpy as np

import simplevector as sv
from simplevector import transfer
from simplevector.engine import snapshot as snapshot_mod
from simplevector._cli import (CONTEXT_SETTINGS, Group, ProgressBar, db_option, open_db,
                               output_option)
from simplevector._output import emit


# -- helpers ---------------------------------------------------------------------------------
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
@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.option("--debug", is_flag=True, default=False, envvar="SIMPLEVECTOR_DEBUG",
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
@click.option("--index", default="auto", show_default=True,
              help="Index spec: auto, Flat, IVF<n>,Flat, IVF<n>,PQ<m>x8[,Refine<r>], "
                   "IVF<n>,RaBitQ[,Refine<r>].")
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
@main.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("namespace")
@click.argument("npy_file", metavar="FILE.npy", type=click.Path(dir_okay=False))
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one id (str or int) per line. Default: the export's, or row numbers.")
@click.option("--metadata", "meta_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one JSON object (or null) per line. Default: the export's.")
@click.option("--documents", "docs_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one JSON string (or null) per line. Default: the export's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows per upsert (one WAL record each).")
@click.option("--create", is_flag=True,
              help="Create the namespace if it does not exist (from the export manifest, "
                   "else --dim/--metric/...).")
@click.option("--dim", type=int, default=None,
              help="With --create: dim (default: the manifest's, else the file's).")
@click.option("--metric", default=None,
              help="With --create: cosine, l2 or ip (default: the manifest's, else cosine).")
@click.option("--model", default=None,
              help="With --create: embedding model name@x.y.z (default: the manifest's).")
@click.option("--index", default=None,
              help="With --create: index spec (default: the manifest's, else auto).")
@version_option
@db_option()
@output_option
def import_(namespace, npy_file, ids_file, meta_file, docs_file, batch_size, create, dim,
            metric, model, index, version, db_path, as_json):
    """Upsert the rows of FILE.npy (memory-mapped) into NAMESPACE, in batches.

    FILE.npy may be the output of `simplevector export` (the prefix or its .npy): its
    manifest then supplies the ids, metadata and documents files and, with --create, the
    dim, metric, model and index; explicit options override it."""
    if not create and any(v is not None for v in (dim, metric, model, index)):
        raise click.UsageError("--dim/--metric/--model/--index only apply with --create")
    with open_db(db_path) as db, ProgressBar(f"importing {namespace}") as bar:
        result = transfer.import_namespace(
            db, npy_file, namespace, create=create, version=version, dim=dim, metric=metric,
            model=model, index=index, ids=ids_file, metadata=meta_file, documents=docs_file,
            batch_size=batch_size, progress=bar)
    if as_json:
        emit(result, True)
    else:
        click.echo(f"imported {result['rows']} rows into {namespace} v{result['version']} in "
                   f"{result['seconds']:.2f} s ({result['rows_per_second']:,.0f} rows/s)")


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
    documents), the input of `simplevector import`, and last OUT_PREFIX.manifest.json (name,
    version, dim, metric, model, index, count, versions). Missing directories are created."""
    with open_db(db_path, readonly=True) as db:
        result = transfer.export_namespace(db, namespace, out_prefix, version=version,
                                           batch_size=batch_size)
    if as_json:
        emit(result, True)
    else:
        click.echo(f"exported {result['rows']} rows of {namespace} v{result['version']} in "
                   f"{result['seconds']:.2f} s to " + ", ".join(result["files"].values()))


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


# -- snapshots and restore ---------------------------------------------------------------------
def _snapshot_path(path: str, db_path: str) -> str:
    """PATH as given, or the snapshot of that name in the database's snapshot directory."""
    if os.path.isdir(path):
        return path
    named = os.path.join(db_path, "snapshots", path)
    return named if os.path.isdir(named) else path


def _snapshot_row(info) -> dict:
    return {"path": info.path, "lsn": info.lsn, "created_at": info.created_at,
            "bytes": info.bytes,
            "namespaces": ", ".join(f"{n['name']} v{n['version']} ({n['count']})"
                                    for n in info.namespaces)}


@main.group(context_settings=CONTEXT_SETTINGS)
def snapshot():
    """Online snapshots of the database: create, list, verify, prune."""


@snapshot.command("create", context_settings=CONTEXT_SETTINGS)
@click.option("--path", "path", default=None, type=click.Path(file_okay=False),
              help="Snapshot directory (default: DB/snapshots/<lsn>-<UTC time>).")
@db_option()
@output_option
def snapshot_create(path, db_path, as_json):
    """Copy the database as of its current LSN (works while another process writes)."""
    with open_db(db_path, readonly=True) as db:
        info = db.snapshot(path)
    emit(info.to_dict() if as_json else _snapshot_row(info), as_json)


@snapshot.command("list", context_settings=CONTEXT_SETTINGS)
@db_option()
@output_option
def snapshot_list(db_path, as_json):
    """The complete snapshots in DB/snapshots, oldest first."""
    with open_db(db_path, readonly=True) as db:
        infos = db.snapshots()
    if as_json:
        emit([i.to_dict() for i in infos], True)
    else:
        emit([_snapshot_row(i) for i in infos], False,
             columns=["path", "lsn", "created_at", "bytes", "namespaces"],
             empty="no snapshots")


@snapshot.command("verify", context_settings=CONTEXT_SETTINGS)
@click.argument("path")
@db_option()
@output_option
def snapshot_verify(path, db_path, as_json):
    """Check PATH's files against its manifest (sizes, SHA-256); exit 0 ok, 1 damaged.
    PATH is a snapshot directory or the name of one in DB/snapshots."""
    manifest = snapshot_mod.verify(_snapshot_path(path, db_path))
    emit({"path": os.path.abspath(_snapshot_path(path, db_path)), "lsn": manifest["lsn"],
          "files": len(manifest["files"]), "ok": True}, as_json)


@snapshot.command("prune", context_settings=CONTEXT_SETTINGS)
@click.option("--keep", type=click.IntRange(min=0), required=True,
              help="How many of the newest snapshots in DB/snapshots to keep.")
@db_option()
@output_option
def snapshot_prune(keep, db_path, as_json):
    """Remove the snapshots in DB/snapshots older than the newest KEEP (frees disk)."""
    with open_db(db_path, readonly=True) as db:
        removed = db.prune_snapshots(keep)
    if as_json:
        emit([i.to_dict() for i in removed], True)
    else:
        emit([_snapshot_row(i) for i in removed], False,
             columns=["path", "lsn", "created_at", "bytes", "namespaces"],
             empty="nothing to remove")


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("namespace", required=False)
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="That version of NAMESPACE (default: its live one).")
@db_option()
@output_option
def compact(namespace, version, db_path, as_json):
    """Rewrite versions without their tombstones and give the space back: every version,
    or NAMESPACE's live one (or --version). It opens DB as its writer (in a process that
    already writes, call db.compact() there); read-only processes keep reading. Exit code 0
    when done (also when nothing needed it), 1 on an error."""
    if version is not None and namespace is None:
        raise click.UsageError("--version needs a NAMESPACE")
    with open_db(db_path, must_exist=True) as db, ProgressBar("compacting") as bar:
        report = db.compact(namespace, version, progress=bar)
    if as_json:
        emit(report.to_dict(), True)
        return
    emit([v.to_dict() for v in report.versions], False,
         columns=["namespace", "version", "positions_before", "rows", "tombstones_removed",
                  "generation", "seconds"], empty="no namespaces")
    click.echo(f"{report.tombstones_removed} tombstones removed; on disk "
               f"{report.bytes_before} -> {report.bytes_after} bytes "
               f"({report.bytes_reclaimed} reclaimed) in {report.seconds:.2f} s")


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source")
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, default=False,
              help="Replace a non-empty TARGET (only after the new copy verified).")
@click.option("--wal-archive", "wal_archive", default=None,
              type=click.Path(file_okay=False, exists=True),
              help="The database's WAL archive (open(..., wal_archive=)): replay it on top "
                   "of the snapshot (point-in-time restore; to its end without --to-*).")
@click.option("--to-lsn", "to_lsn", type=click.IntRange(min=0), default=None,
              help="Replay the archived WAL up to this LSN, inclusive.")
@click.option("--to-time", "to_time", default=None,
              help="Replay records written at or before this time: epoch seconds or "
                   "ISO-8601 (2026-12-02T01:30:00Z).")
@click.option("--dry-run", "dry_run", is_flag=True, default=False,
              help="Build and verify the restore in a staging directory, report, remove it: "
                   "TARGET is not touched.")
@db_option()
@output_option
def restore(source, target, force, wal_archive, to_lsn, to_time, dry_run, db_path, as_json):
    """Restore the snapshot SOURCE into the new database directory TARGET, verified;
    with --wal-archive, to a point in time (--to-lsn N or --to-time T).
    SOURCE is a snapshot directory or the name of one in DB/snapshots. Exit code 0 when
    restored (or, with --dry-run, when it would be), 1 on any problem (nothing written)."""
    report = sv.restore(_snapshot_path(source, db_path), target, force=force,
                        to_lsn=to_lsn, to_time=to_time, wal_archive=wal_archive,
                        dry_run=dry_run)
    data = report.to_dict()
    data["seconds"] = round(data["seconds"], 3)
    if not as_json:
        data["namespaces"] = ", ".join(f"{n['name']} v{n['version']} ({n['count']})"
                                       for n in report.namespaces)
    emit(data, as_json)


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@db_option()
@output_option
def upgrade(path, db_path, as_json):
    """Convert the database at PATH (default: --db) to this release's on-disk format: a
    copy is built beside it and verified row by row, then swapped in; the old directory is kept as
    PATH.format<N>-backup (delete it once you are satisfied). Close every process that
    has the database open first."""
    with ProgressBar("converting rows") as bar:
        report = sv.upgrade(path or db_path, progress=bar)
    if report.backup is None:
        emit({"path": report.path, "format_version": report.to_format,
              "upgraded": False}, as_json)
        return
    with open_db(report.path):
        pass                                # replay the copied WAL, write a checkpoint
    emit({"path": report.path, "from_format": report.from_format,
          "to_format": report.to_format, "backup": report.backup,
          "versions": report.versions, "rows": report.rows,
          "seconds": round(report.seconds, 3), "upgraded": True}, as_json)


def _register_ops_commands():
    from simplevector.cli_ops import register
    register(main)
    from simplevector.cli_server import register as register_server
    register_server(main)
    from simplevector.cli_security import register as register_security
    register_security(main)
    from simplevector.cli_fresh import register as register_fresh
    register_fresh(main)
    from simplevector.cli_integrity import register as register_integrity
    register_integrity(main)


_register_ops_commands()


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
