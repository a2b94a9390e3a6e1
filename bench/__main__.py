"""``python -m bench``: the benchmark harness (run from the repository root).

    python -m bench quick                 # 20k x 64 synthetic, SimpleVector + FAISS, ~2 min
    python -m bench full                  # GloVe 400k, synthetic 50k, MiniLM 384-d, 768-d
                                          # stand-in; every available peer
    python -m bench run --dataset glove --systems simplevector-ivfpq,hnswlib --n 100000
    python -m bench report bench/results/RUN.json [--out DIR]
    python -m bench systems               # which adapters can run here
    python -m bench filtered [-h]         # filtered recall/QPS by selectivity vs FAISS

See bench/HARNESS.md.
"""

from __future__ import annotations

import sys

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

QUICK_DATASET = "synthetic:n=20000,dim=64,clusters=100,queries=500"
FULL_DATASETS = ("glove", "synthetic:n=50000,dim=128,clusters=200,queries=1000",
                 "minilm:n=60000,queries=1000", "spectral:n=60000,dim=768,queries=1000")


def _full_datasets(n) -> list:
    """FULL_DATASETS less minilm when it cannot be made here (said on stderr, with the fix)."""
    from .textsets import minilm_unavailable
    out = []
    for spec in FULL_DATASETS:
        if spec.startswith("minilm"):
            why = minilm_unavailable((n or 60000) + 1000)
            if why is not None:
                click.echo(f"skipping dataset {spec}: {why}", err=True)
                continue
        out.append(spec)
    return out


def _common(f):
    opts = [
        click.option("--name", default=None, help="Run name, used in the JSON file name."),
        click.option("--k", "k", default=10, show_default=True, type=click.IntRange(1, 100),
                     help="Neighbours per query (recall@k)."),
        click.option("--single-queries", type=click.IntRange(1), default=None,
                     help="Queries in the one-query-per-call loop (default: all queries)."),
        click.option("--batch-repeats", default=3, show_default=True, type=click.IntRange(1),
                     help="Repeats of the batch call; the median is reported."),
        click.option("--out-dir", type=click.Path(file_okay=False), default=None,
                     help="Where the JSON goes (default bench/results/)."),
        click.option("--workdir", type=click.Path(file_okay=False), default=None,
                     help="Parent of the temporary index directories (default: system temp). "
                          "Put it on the disk you care about: fsync cost depends on it."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Ground-truth cache (default bench/.cache/)."),
        click.option("--timeout", type=float, default=None,
                     help="Seconds per system before its child process is killed."),
        click.option("--in-process", is_flag=True,
                     help="Run systems in this process (debugging; peak RSS is then cumulative)."),
        click.option("--target-recall", default=0.9, show_default=True, type=float,
                     help="Table rows show each system's best QPS at or above this recall."),
        click.option("--no-report", is_flag=True, help="Write the JSON only."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# adapters that take the IVF parameters, and their own names for them
_IVF_KEYS = {
    "simplevector-ivfpq": ("nlist", "pq_m"),
    "faiss-ivfpq": ("nlist", "pq_m"),
    "simplevector-rabitq": ("nlist", None),
    "faiss-rabitq": ("nlist", None),
    "faiss-ivfflat": ("nlist", None),
    "lancedb-ivfpq": ("num_partitions", "num_sub_vectors"),
}


def _ivf_configs(names, nlist, pq_m) -> dict:
    configs = {}
    for name in names:
        keys = _IVF_KEYS.get(name)
        if keys is None:
            continue
        config = {}
        if nlist is not None:
            config[keys[0]] = nlist
        if pq_m is not None and keys[1] is not None:
            config[keys[1]] = pq_m
        if config:
            configs[name] = config
    return configs


def _go(datasets, systems, *, name, n=None, queries=None, configs=None, k, single_queries,
        batch_repeats, out_dir, workdir, cache_dir, timeout, in_process, target_recall,
        no_report):
    from . import report, runner
    path = runner.run(datasets, systems, name=name, n=n, queries=queries, k=k,
                      single_queries=single_queries, batch_repeats=batch_repeats,
                      out_dir=out_dir, workdir=workdir, cache_dir=cache_dir, timeout=timeout,
                      isolate=not in_process, target_recall=target_recall, configs=configs,
                      argv=["python", "-m", "bench", *sys.argv[1:]])
    click.echo(f"results: {path}", err=True)
    if not no_report:
        for text, md, pngs in report.report([path]):
            click.echo(text)
            click.echo(f"report: {md}" + "".join(f"\nplot: {p}" for p in pngs), err=True)
    return path


def _systems(value: str) -> list[str]:
    from .systems import ALL, QUICK
    if value in ("all", "", None):
        return list(ALL)
    if value == "quick":
        return list(QUICK)
    return [s.strip() for s in value.split(",") if s.strip()]


@click.group(context_settings=CONTEXT)
def cli():
    """SimpleVector's benchmark harness: recall, latency, throughput, size and reopen time of
    SimpleVector and its peers, side by side in one run. See bench/HARNESS.md."""


@cli.command(context_settings=CONTEXT)
@_common
def quick(**opts):
    """Fast regression signal: 20k x 64 synthetic, SimpleVector and FAISS (flat, IVF-PQ)."""
    from .systems import QUICK
    opts["name"] = opts["name"] or "quick"
    _go([QUICK_DATASET], list(QUICK), **opts)


@cli.command(context_settings=CONTEXT)
@click.option("--n", type=click.IntRange(1000), default=None,
              help="Cut every dataset's base to n rows.")
@_common
def full(n, **opts):
    """Everything: GloVe 400k (cosine), synthetic 50k x 128 (l2), MiniLM 60k x 384 over
    WordNet (cosine; needs the bench-embed extra or a cached copy, else skipped) and the
    768-d spectral stand-in, all available systems."""
    from .systems import ALL
    opts["name"] = opts["name"] or "full"
    _go(_full_datasets(n), list(ALL), n=n, **opts)


@cli.command(context_settings=CONTEXT)
@click.option("--dataset", "dataset_specs", multiple=True, required=True,
              help="Dataset spec, repeatable: synthetic[:n=..,dim=..,clusters=..,metric=..], "
                   "glove[:n=..], npy:PATH[,metric=..], hdf5:PATH.")
@click.option("--systems", default="quick", show_default=True,
              help="Comma-separated adapter names, 'quick' or 'all' (see `python -m bench "
                   "systems`).")
@click.option("--n", type=click.IntRange(1), default=None, help="Cut the base to n rows.")
@click.option("--queries", type=click.IntRange(1), default=None,
              help="Number of queries (held out / generated).")
@click.option("--nlist", type=click.IntRange(1), default=None,
              help="Inverted lists for every IVF system (default: the harness's rule).")
@click.option("--pq-m", type=click.IntRange(1), default=None,
              help="PQ sub-vectors for every IVF-PQ system; must divide the dim.")
@_common
def run(dataset_specs, systems, n, queries, nlist, pq_m, **opts):
    """Run chosen systems on chosen datasets."""
    from .systems import REGISTRY
    names = _systems(systems)
    unknown = [s for s in names if s not in REGISTRY]
    if unknown:
        raise click.BadParameter(f"unknown system(s) {', '.join(unknown)}; expected "
                                 f"{', '.join(REGISTRY)}", param_hint="--systems")
    opts["name"] = opts["name"] or "run"
    try:
        _go(list(dataset_specs), names, n=n, queries=queries,
            configs=_ivf_configs(names, nlist, pq_m), **opts)
    except ValueError as e:
        raise click.ClickException(str(e))


@cli.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the .md and .png files (default: next to each JSON).")
@click.option("--target-recall", type=float, default=None,
              help="Recall floor for the table rows (default: the run's).")
def report(runs, out, target_recall):
    """Markdown table and PNG plots from run JSON files (default: the newest run)."""
    import glob
    import os

    from . import report as rep
    from .runner import RESULTS_DIR
    if not runs:
        found = sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json")), key=os.path.getmtime)
        if not found:
            raise click.ClickException(f"no run JSON given and none in {RESULTS_DIR}")
        runs = (found[-1],)
    for text, md, pngs in rep.report(list(runs), out, target_recall):
        click.echo(text)
        click.echo(f"report: {md}" + "".join(f"\nplot: {p}" for p in pngs), err=True)


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True,
                 "help_option_names": []}


@cli.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def filtered(args):
    """Filtered search by selectivity: recall@10 and QPS, SimpleVector against FAISS's
    IDSelector (bench/filtered.py; -h for its options)."""
    from . import filtered as filtered_mod
    raise SystemExit(filtered_mod.main(list(args)))


@cli.command(context_settings=CONTEXT)
def systems():
    """List the system adapters and whether each can run here."""
    from .systems import REGISTRY, probe
    for name in REGISTRY:
        why = probe(name)
        click.echo(f"{name:22s} {'available' if why is None else why}")


if __name__ == "__main__":
    cli(prog_name="python -m bench")
