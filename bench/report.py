"""Result JSON -> Markdown tables and PNG plots (matplotlib, Agg).

    python -m bench report bench/results/RUN.json [...] [--out DIR]

Every ratio is computed between systems of the same run and dataset (same machine, same
moment, same data), never across runs.
"""

from __future__ import annotations

import json
import os

MiB = 2 ** 20


# ------------------------------------------------------------------------------ figures
def ok_systems(ds_res: dict) -> list[dict]:
    return [s for s in ds_res["systems"] if s.get("status") == "ok" and s.get("sweep")]


def headline(system: dict, target: float) -> dict | None:
    """The sweep point a table row shows: the highest single-query QPS with recall >=
    ``target``; if no point reaches it, the point with the highest recall."""
    pts = system.get("sweep") or []
    if not pts:
        return None
    good = [p for p in pts if p["recall"] >= target]
    if good:
        return max(good, key=lambda p: p["single"]["qps"])
    return max(pts, key=lambda p: (p["recall"], p["single"]["qps"]))


def pareto(points: list[dict]) -> list[dict]:
    """Points not beaten on both recall and single-query QPS, by recall ascending."""
    pts = sorted(points, key=lambda p: (-p["single"]["qps"], -p["recall"]))
    front, best = [], -1.0
    for p in pts:
        if p["recall"] > best:
            front.append(p)
            best = p["recall"]
    return sorted(front, key=lambda p: p["recall"])


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def _reopen(s):
    r = s.get("reopen")
    return r["first_answer_s"] if r else None


def ratios(ds_res: dict, target: float = 0.9) -> list[dict]:
    """SimpleVector system / each peer, at each one's headline point (same run)."""
    systems = ok_systems(ds_res)
    ours = [s for s in systems if s["system"].startswith("simplevector")]
    peers = [s for s in systems if not s["system"].startswith("simplevector")]
    out = []
    for s in ours:
        hs = headline(s, target)
        for p in peers:
            hp = headline(p, target)
            out.append({
                "system": s["system"], "peer": p["system"],
                "recall": hs["recall"], "peer_recall": hp["recall"],
                "ingest_x": _ratio(s["build"]["vectors_per_s"], p["build"]["vectors_per_s"]),
                "qps_x": _ratio(hs["single"]["qps"], hp["single"]["qps"]),
                "batch_qps_x": _ratio(hs["batch"]["qps"], hp["batch"]["qps"]),
                "p99_x": _ratio(hs["single"]["p99_ms"], hp["single"]["p99_ms"]),
                "size_x": _ratio(s.get("size_bytes"), p.get("size_bytes")),
                "rss_x": _ratio(s.get("peak_rss_bytes"), p.get("peak_rss_bytes")),
                "reopen_x": _ratio(_reopen(s), _reopen(p)),
            })
    return out


# ----------------------------------------------------------------------------- markdown
def _f(v, fmt="{:,.0f}", none="–"):
    return none if v is None else fmt.format(v)


def _mib(v):
    return None if v is None else v / MiB


def _params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items()) or "–"


def markdown(doc: dict, target: float | None = None) -> str:
    target = target if target is not None else doc["params"].get("target_recall", 0.9)
    m, v = doc["machine"], doc["versions"]
    mem = m.get("mem_total_bytes")
    lines = [f"# Benchmark `{doc['name']}` ({doc['created']})", "",
             f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores"
             f"{', ' + format(mem / 2**30, '.0f') + ' GiB' if mem else ''}; "
             f"load average at start {m.get('loadavg_at_start')}. "
             f"simplevector {v.get('simplevector')} ({v.get('git')}), Python {v.get('python')}.",
             f"Command: `{' '.join(doc.get('command') or [])}`", ""]
    for ds_res in doc["datasets"]:
        d, k = ds_res["dataset"], ds_res["k"]
        lines += [f"## {d['name']}: {d['n']:,} x {d['dim']}, {d['metric']}, "
                  f"{d['queries']:,} queries, recall@{k}", "",
                  f"Each row is the system's best single-query QPS with recall@{k} >= "
                  f"{target} (or its highest recall when none reaches it). Build = ingest + "
                  "index; reopen = fresh process opens the stored index and answers one query.",
                  ""]
        lines.append(f"| system | kind | recall@{k} | QPS (1 query) | p50 ms | p95 ms | p99 ms | "
                     "QPS (batch) | build s | vectors/s | disk MiB | peak RSS MiB | "
                     "reopen s | params |")
        lines.append("|" + "---|" * 14)
        for s in ok_systems(ds_res):
            h = headline(s, target)
            lines.append(
                f"| {s['system']} | {s.get('kind')} | {h['recall']:.4f} | "
                f"{_f(h['single']['qps'])} | {h['single']['p50_ms']:.3f} | "
                f"{h['single']['p95_ms']:.3f} | {h['single']['p99_ms']:.3f} | "
                f"{_f(h['batch']['qps'])} | {s['build']['seconds']:.2f} | "
                f"{_f(s['build']['vectors_per_s'])} | {_f(_mib(s.get('size_bytes')), '{:.1f}')} | "
                f"{_f(_mib(s.get('peak_rss_bytes')), '{:.0f}')} | "
                f"{_f(_reopen(s), '{:.3f}')} | {_params(h['params'])} |")
        rest = [s for s in ds_res["systems"] if s not in ok_systems(ds_res)]
        if rest:
            lines.append("")
            for s in rest:
                lines.append(f"- {s['system']}: {s.get('status')}: {s.get('message')}")
        rat = ds_res.get("ratios") or ratios(ds_res, target)
        if rat:
            lines += ["", "Ratios, SimpleVector / peer, each at its row above (same run; "
                      "above 1 = SimpleVector has more of it: good for ingest and QPS, bad for "
                      "p99, disk, RSS and reopen):", "",
                      "| SimpleVector | peer | recall (ours / peer) | ingest x | QPS x | "
                      "batch QPS x | p99 x | disk x | RSS x | reopen x |",
                      "|" + "---|" * 10]
            for r in rat:
                lines.append(
                    f"| {r['system']} | {r['peer']} | {r['recall']:.3f} / {r['peer_recall']:.3f}"
                    f" | {_f(r['ingest_x'], '{:.2f}')} | {_f(r['qps_x'], '{:.2f}')} | "
                    f"{_f(r['batch_qps_x'], '{:.2f}')} | {_f(r['p99_x'], '{:.2f}')} | "
                    f"{_f(r['size_x'], '{:.2f}')} | {_f(r['rss_x'], '{:.2f}')} | "
                    f"{_f(r['reopen_x'], '{:.2f}')} |")
        sweeps = [s for s in ok_systems(ds_res) if len(s["sweep"]) > 1]
        if sweeps:
            lines += ["", "Parameter sweeps (recall-QPS curves):", "",
                      f"| system | params | recall@{k} | QPS (1 query) | p50 ms | p99 ms | "
                      "QPS (batch) |", "|" + "---|" * 7]
            for s in sweeps:
                for p in s["sweep"]:
                    lines.append(f"| {s['system']} | {_params(p['params'])} | "
                                 f"{p['recall']:.4f} | {_f(p['single']['qps'])} | "
                                 f"{p['single']['p50_ms']:.3f} | {p['single']['p99_ms']:.3f} | "
                                 f"{_f(p['batch']['qps'])} |")
        lines += ["", "What \"build\" leaves durable:", ""]
        for s in ok_systems(ds_res):
            lines.append(f"- {s['system']} ({s.get('kind')}): {s.get('durability')}")
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- plots
def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def plots(doc: dict, out_dir: str, stem: str, target: float | None = None) -> list[str]:
    """PNG plots per dataset; [] when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    target = target if target is not None else doc["params"].get("target_recall", 0.9)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ds_res in doc["datasets"]:
        d, k = ds_res["dataset"], ds_res["k"]
        systems = ok_systems(ds_res)
        if not systems:
            continue
        title = f"{d['name']} ({d['n']:,} x {d['dim']}, {d['metric']})"
        base = os.path.join(out_dir, f"{stem}-{_slug(d['name'])}")

        fig, ax = plt.subplots(figsize=(8, 5.5))
        for s in systems:
            front = pareto(s["sweep"])
            xs = [p["recall"] for p in s["sweep"]]
            ys = [p["single"]["qps"] for p in s["sweep"]]
            line, = ax.plot([p["recall"] for p in front], [p["single"]["qps"] for p in front],
                            marker="o", label=s["system"])
            ax.scatter(xs, ys, s=12, alpha=0.35, color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k}")
        ax.set_ylabel("queries per second (one query per call, log)")
        ax.set_title(f"Recall vs QPS (Pareto) — {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(base + "-pareto.png", dpi=110)
        plt.close(fig)
        paths.append(base + "-pareto.png")

        names = [s["system"] for s in systems]
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
        vals = [s["build"]["vectors_per_s"] for s in systems]
        ax.barh(names, vals, color=["C0" if n.startswith("simplevector") else "C7"
                                    for n in names])
        ax.set_xscale("log")
        ax.set_xlabel("build throughput, vectors/s (ingest + index, log)")
        ax.set_title(f"Ingest — {title}")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        fig.tight_layout()
        fig.savefig(base + "-ingest.png", dpi=110)
        plt.close(fig)
        paths.append(base + "-ingest.png")

        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
        width = 0.27
        for j, (key, lab) in enumerate((("p50_ms", "p50"), ("p95_ms", "p95"),
                                        ("p99_ms", "p99"))):
            vals = [headline(s, target)["single"][key] for s in systems]
            ax.bar([i + (j - 1) * width for i in range(len(names))], vals, width, label=lab)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("single-query latency, ms (log)")
        ax.set_title(f"Latency at recall@{k} >= {target} — {title}", fontsize=10)
        ax.legend()
        ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(base + "-latency.png", dpi=110)
        plt.close(fig)
        paths.append(base + "-latency.png")
    return paths


def report(paths, out_dir: str | None = None, target: float | None = None) -> list[tuple]:
    """For each run JSON: write ``<stem>.md`` and the PNGs next to it (or into ``out_dir``).
    Returns ``[(markdown_text, md_path, png_paths), ...]``."""
    done = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        stem = os.path.splitext(os.path.basename(path))[0]
        where = out_dir or os.path.dirname(os.path.abspath(path))
        os.makedirs(where, exist_ok=True)
        text = markdown(doc, target)
        md_path = os.path.join(where, stem + ".md")
        with open(md_path, "w") as f:
            f.write(text)
        done.append((text, md_path, plots(doc, where, stem, target)))
    return done
