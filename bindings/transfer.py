"""Export a namespace to plain files and import such files into a namespace.

The CLI's ``export`` and ``import`` are thin wrappers around :func:`export_namespace` and
:func:`import_namespace`; a server route can call the same functions. No click here.

An export with prefix ``P`` (e.g. ``backup/docs``) is::

    P.npy              float32, shape (rows, dim)
    P.ids.jsonl        one id per line (a JSON string or integer)
    P.metadata.jsonl   one JSON object (or null) per line
    P.documents.jsonl  one JSON string (or null) per line; only when some row has a document
    P.manifest.json    written last, atomically: what the namespace was (see below)

The manifest holds ``format`` ("simplevector-export"), ``format_version``, ``name``,
``version``, ``dim``, ``metric``, ``model``, ``index`` (the configured spec), ``count``,
``versions`` (every version of the namespace at export time, as ``ns versions`` lists them),
``lsn``, ``exported_at`` (ISO-8601 UTC) and ``files`` (names relative to the manifest).
Only the rows of the exported version are in the files; ``versions`` is a record, and an
import creates one version.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

import simplevector as sv
from simplevector._output import dumps, iso_utc

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "export_paths", "export_namespace",
           "read_manifest", "import_namespace"]

MANIFEST_FORMAT = "simplevector-export"
MANIFEST_VERSION = 1
_SUFFIXES = {"vectors": ".npy", "ids": ".ids.jsonl", "metadata": ".metadata.jsonl",
             "documents": ".documents.jsonl", "manifest": ".manifest.json"}


def _prefix(path) -> str:
    path = os.fspath(path)
    return path[:-4] if path.endswith(".npy") else path


def export_paths(prefix) -> dict:
    """The files of an export with ``prefix`` (a trailing ``.npy`` is dropped)."""
    prefix = _prefix(prefix)
    return {key: prefix + suffix for key, suffix in _SUFFIXES.items()}


def _storage_error(e: OSError, what: str) -> sv.StorageError:
    return sv.StorageError(f"cannot {what}: {e.strerror or e} ({e.filename or '?'})")


def _live_ids(db, namespace: str, version):
    """Ids of the stored rows in insertion order, and the version's status."""
    return db.namespace(namespace, version).ids(), db.version_status(namespace, version)


def _write_json_atomic(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(value, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_namespace(db, name: str, dest, *, version=None, batch_size: int = 1000,
                     progress=None) -> dict:
    """Write namespace ``name`` (the live version, or ``version``) to the files at prefix
    ``dest``, creating missing parent directories; the manifest is written last.

    progress: optional ``callable(done, total)`` called after each batch (rows).
    Returns ``{"namespace", "version", "rows", "seconds", "files", "manifest"}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise sv.InvalidInput(f"batch_size {batch_size!r} is not valid; expected an int >= 1")
    t0 = time.perf_counter()
    paths = export_paths(dest)
    handle = db.namespace(name, version)
    info = next(i for i in db.list_namespaces() if i.name == name)
    ids, config = _live_ids(db, name, version)
    this = next(v for v in info.versions if v.version == config.version)
    n = len(ids)
    try:
        parent = os.path.dirname(os.path.abspath(paths["vectors"]))
        os.makedirs(parent, exist_ok=True)
        written, any_docs = _write_rows(handle, ids, config.dim, paths, batch_size, progress)
        if written < n:                     # rows vanished concurrently: shrink the .npy
            np.save(paths["vectors"],
                    np.load(paths["vectors"], mmap_mode="r")[:written].copy())
        if not any_docs:
            os.remove(paths["documents"])
        files = {key: paths[key] for key in ("vectors", "ids", "metadata", "documents")
                 if key != "documents" or any_docs}
        manifest = {
            "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
            "name": name, "version": config.version, "dim": config.dim,
            "metric": this.metric, "model": this.model, "index": this.index,
            "count": written, "versions": info.versions, "lsn": db.lsn,
            "exported_at": iso_utc(time.time()),
            "files": {key: os.path.basename(path) for key, path in files.items()}}
        _write_json_atomic(paths["manifest"], manifest)
    except OSError as e:
        raise _storage_error(e, f"export {name!r} to {paths['vectors']}") from e
    return {"namespace": name, "version": config.version, "rows": written,
            "seconds": round(time.perf_counter() - t0, 3),
            "files": {**files, "manifest": paths["manifest"]}}


def _write_rows(handle, ids, dim, paths, batch_size, progress):
    out = np.lib.format.open_memmap(paths["vectors"], mode="w+", dtype=np.float32,
                                    shape=(len(ids), dim))
    written = 0
    any_docs = False
    with open(paths["ids"], "w", encoding="utf-8") as fi, \
            open(paths["metadata"], "w", encoding="utf-8") as fm, \
            open(paths["documents"], "w", encoding="utf-8") as fd:
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size]
            records = handle.get(batch, include=("metadata", "documents", "vectors"))
            for rec in records:
                if rec is None:             # deleted by a writer since the ids were listed
                    continue
                out[written] = rec.vector
                written += 1
                fi.write(dumps(rec.id) + "\n")
                fm.write(dumps(rec.metadata) + "\n")
                fd.write(dumps(rec.document) + "\n")
                any_docs = any_docs or rec.document is not None
            if progress is not None:
                progress(min(start + batch_size, len(ids)), len(ids))
    out.flush()
    del out
    return written, any_docs


def read_manifest(src):
    """The manifest beside the export at ``src`` (prefix or ``.npy``), or None if absent."""
    path = export_paths(src)["manifest"]
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise sv.InvalidInput(f"{path} is not a readable export manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise sv.InvalidInput(f"{path} is not a SimpleVector export manifest "
                              f"(expected \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise sv.InvalidInput(
            f"{path} has format_version {manifest.get('format_version')!r}; this SimpleVector "
            f"reads {MANIFEST_VERSION}", hint="import it with the SimpleVector that wrote it")
    return manifest


# -- import -------------------------------------------------------------------------------------
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


_CHECKS = {"ids": ("id", _check_id), "metadata": ("metadata", _check_meta),
           "documents": ("document", _check_doc)}


def _load_vectors(src):
    path = os.fspath(src)
    if not path.endswith(".npy") and not os.path.exists(path) and os.path.exists(path + ".npy"):
        path += ".npy"
    try:
        X = np.load(path, mmap_mode="r")
    except FileNotFoundError as e:
        raise sv.InvalidInput(f"{path} does not exist; expected a .npy file or an export "
                              "prefix") from e
    except (OSError, ValueError) as e:
        raise sv.InvalidInput(f"{path} is not a readable .npy file: {e}") from e
    if X.ndim != 2:
        raise sv.InvalidInput(f"{path} has shape {X.shape}; expected (rows, dim)")
    return path, X


def import_namespace(db, src, name=None, *, create: bool = False, version=None, dim=None,
                     metric=None, model=None, index=None, ids=None, metadata=None,
                     documents=None, batch_size: int = 1000, progress=None) -> dict:
    """Upsert the rows of the ``.npy`` at ``src`` (or export prefix) into namespace ``name``.

    When an export manifest sits beside ``src`` it supplies the defaults: ``name``, the
    ids/metadata/documents files, and (with ``create``) dim, metric, model and index; an
    explicit argument overrides it. A manifest whose dim or count does not match the
    ``.npy`` raises :class:`DimensionMismatch` / :class:`InvalidInput`. Without a manifest,
    ids default to row numbers and ``create`` to the file's width and cosine.

    create: create the namespace when it does not exist. progress: optional
    ``callable(done, total)`` called after each batch (rows).
    Returns ``{"namespace", "version", "rows", "seconds", "rows_per_second", "created",
    "manifest"}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise sv.InvalidInput(f"batch_size {batch_size!r} is not valid; expected an int >= 1")
    path, X = _load_vectors(src)
    n, width = X.shape
    manifest = read_manifest(path)
    manifest_path = export_paths(path)["manifest"] if manifest else None
    files = {"ids": ids, "metadata": metadata, "documents": documents}
    if manifest is not None:
        if manifest.get("dim") != width:
            raise sv.DimensionMismatch(
                f"{manifest_path} says dim {manifest.get('dim')!r} but {path} has "
                f"{width} columns; expected the two to match")
        if manifest.get("count") != n:
            raise sv.InvalidInput(f"{manifest_path} says count {manifest.get('count')!r} but "
                                  f"{path} has {n} rows; expected the two to match")
        base = os.path.dirname(manifest_path)
        for key, given in files.items():
            listed = (manifest.get("files") or {}).get(key)
            if given is None and listed:
                files[key] = os.path.join(base, listed)
        name = name if name is not None else manifest.get("name")
    if name is None:
        raise sv.InvalidInput("no namespace name given and no export manifest beside "
                              f"{path} to take it from")
    for key, file in files.items():
        if file is not None:
            if not os.path.isfile(file):
                raise sv.InvalidInput(f"{key} file {file} does not exist")
            lines = _count_lines(file)
            if lines != n:
                raise sv.InvalidInput(f"{file} has {lines} lines for {n} vectors in {path}; "
                                      f"expected {n}")

    created = False
    if create and not any(i.name == name for i in db.list_namespaces()):
        m = manifest or {}
        db.create_namespace(name, dim=dim if dim is not None else m.get("dim", width),
                            metric=metric or m.get("metric") or "cosine",
                            model=model if model is not None else m.get("model"),
                            index=index or m.get("index") or "auto")
        created = True
    handle = db.namespace(name, version)
    streams = {key: _jsonl_batches(file, batch_size, *_CHECKS[key])
               for key, file in files.items() if file is not None}
    done = 0
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        parts = {key: next(stream) for key, stream in streams.items()}
        batch_ids = parts.pop("ids", None)
        if batch_ids is None:
            batch_ids = list(range(start, stop))
        handle.upsert(batch_ids, np.asarray(X[start:stop]), **parts)
        done += stop - start
        if progress is not None:
            progress(done, n)
    seconds = time.perf_counter() - t0
    rate = done / seconds if seconds > 0 else float("inf")
    return {"namespace": name, "version": handle.version, "rows": done,
            "seconds": round(seconds, 3), "rows_per_second": round(rate, 1),
            "created": created, "manifest": manifest_path}
