"""Smoke test of bench/server.py: it runs end to end at tiny sizes (the server started on a
free loopback port and stopped), every run serves its calls without errors, and the JSON
holds the machine, the runs and the ratios. No timing assertions."""

from __future__ import annotations

import json
import os
import sys

try:
    from bench import server as bench_server
except ImportError:  # bench/ is not an installed package; it lives at the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import server as bench_server

RUNS = [f"{side}_{op}_{n}" for side in ("embedded", "server") for op in ("query", "upsert")
        for n in ("1", "n")]


def test_bench_server_runs_small_and_reports_every_figure(tmp_path):
    out = tmp_path / "server.json"
    bench_server.main(["--clients", "2", "--seconds", "0.5", "--n", "300", "--dim", "8",
                       "--calls", "12", "--batch", "4", "--no-chroma", "--warm", "0.2",
                       "--dir", str(tmp_path),
                       "--out", str(out)])
    data = json.loads(out.read_text())
    assert {"cpu_model", "cores", "loadavg_at_start"} <= set(data["machine"])
    for name in RUNS:
        run = data["runs"][name]
        assert run["calls"] > 0 and run["errors"] == 0, (name, run)
        assert run["p50_ms"] <= run["p99_ms"]
    assert all(v is not None and v > 0 for v in data["ratios"].values())
    assert [p for p in os.listdir(tmp_path) if p.startswith("sv-bench-server-")] == []
