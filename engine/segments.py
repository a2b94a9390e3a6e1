"""Checkpoints: every version's derived state as of one LSN, one array bundle per version.

A checkpoint at LSN ``L`` is the directory ``<db>/ckpt/<L:020d>/`` holding ``v<vid>.arr``
(:func:`~.arrayfile.write_bundle`: alive mask, norms, id map, field indexes, IVF lists)
for every version. It is written as ``<L>.tmp``, each file fsync'd, renamed into place and
the directory fsync'd; only then does LMDB's ``meta`` record it (``schema.META_SNAPSHOT``:
LSN, directory, catalog). A version that did not change since the previous checkpoint is
hard-linked from it, not rewritten. Older checkpoint directories are removed after the
record commits; a directory that no record names (a checkpoint cut short by a crash) is
removed at the next open. Reopening maps the bundles and replays the WAL after ``L``.

Checkpoints hold no rows: those are in the row files (``<db>/rows/<vid>.f32``).
"""

from __future__ import annotations

import os
import shutil
import time

from .arrayfile import read_bundle, write_bundle

CKPT_DIR = "ckpt"
ROWS_DIR = "rows"


def ckpt_root(dbpath: str) -> str:
    return os.path.join(dbpath, CKPT_DIR)


def ckpt_name(lsn: int) -> str:
    """Unique per checkpoint (two checkpoints at one LSN, e.g. after a training, differ)."""
    return f"{lsn:020d}-{time.time_ns():020d}"


def bundle_path(dbpath: str, name: str, vid: int) -> str:
    return os.path.join(ckpt_root(dbpath), name, f"v{vid}.arr")


def row_path(dbpath: str, vid: int, gen: int = 0) -> str:
    """A version's row file: ``<vid>.f32``, then ``<vid>.g<gen>.f32`` after each
    compaction (engine/compact.py) starts a new generation."""
    name = f"{vid}.f32" if not gen else f"{vid}.g{gen}.f32"
    return os.path.join(dbpath, ROWS_DIR, name)


def parse_row_name(name: str):
    """(vid, gen) of a row file name, or None for anything else."""
    parts = name.split(".")
    if len(parts) == 2 and parts[1] == "f32" and parts[0].isdigit():
        return int(parts[0]), 0
    if (len(parts) == 3 and parts[2] == "f32" and parts[0].isdigit()
            and parts[1][:1] == "g" and parts[1][1:].isdigit()):
        return int(parts[0]), int(parts[1][1:])
    return None


def fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(dbpath: str, lsn: int, captured: dict, previous: str | None,
          clean: list) -> tuple[str, int]:
    """Write checkpoint ``lsn``: ``captured`` vid -> (meta, arrays) of changed versions,
    ``clean`` the vids whose bundle in checkpoint ``previous`` is still current.
    Returns (directory name, bytes written)."""
    root = ckpt_root(dbpath)
    os.makedirs(root, exist_ok=True)
    name = ckpt_name(lsn)
    tmp = os.path.join(root, name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    written = 0
    for vid, (meta, arrays) in captured.items():
        written += write_bundle(os.path.join(tmp, f"v{vid}.arr"), meta, arrays)
    for vid in clean:
        os.link(bundle_path(dbpath, previous, vid), os.path.join(tmp, f"v{vid}.arr"))
    fsync_dir(tmp)
    os.rename(tmp, os.path.join(root, name))
    fsync_dir(root)
    return name, written


def read(dbpath: str, name: str, vid: int) -> tuple[dict, dict]:
    return read_bundle(bundle_path(dbpath, name, vid))


def has(dbpath: str, name: str, vid: int) -> bool:
    return os.path.exists(bundle_path(dbpath, name, vid))


def remove_others(dbpath: str, keep: str | None):
    """Remove every checkpoint directory but ``keep`` (mapped bundles stay readable by
    whoever has them mapped; the space returns when they unmap)."""
    root = ckpt_root(dbpath)
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        if entry != keep:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def bytes_on_disk(dbpath: str, subdirs=(CKPT_DIR, ROWS_DIR)) -> int:
    """Allocated bytes (st_blocks) of the files under ``subdirs`` of a database."""
    total = 0
    for sub in subdirs:
        for dirpath, _dirs, files in os.walk(os.path.join(dbpath, sub)):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
    return total
