"""Freshness, cost and migration commands of the ``simplevector`` CLI: ``sync``,
``query-text``, ``freshness``, ``cost``, ``budget set|list``, ``limit set|list`` and
``migrate plan|start|status|shadow|promote|rollback|abort``.

They share the main CLI's conventions (:mod:`simplevector._cli`). Commands that embed take
``--embedding SPEC``: ``glove`` (the offline GloVe 6B 50-d mean, model
``glove-6b-50d-mean@1.0.0``), ``glove:X.Y.Z`` (the same vectors under model version X.Y.Z),
or ``package.module:factory`` (an importable callable returning an embedding function).
"""

from __future__ import annotations

import importlib
import json
import sys

import click

import simplevector as sv
from simplevector import embeddings
from simplevector._cli import Command, Group, db_option, open_db, output_option
from simplevector._output import dumps, emit

embedding_option = click.option(
    "--embedding", "embedding_spec", default="glove", show_default=True,
    help="glove, glove:X.Y.Z (model version) or package.module:factory.")


def load_embedding(spec: str):
    """The embedding function named by ``spec`` (see the module docstring)."""
    if spec == "glove":
        return embeddings.GloVeMean()
    if spec.startswith("glove:"):
        return embeddings.GloVeMean(model=f"glove-6b-50d-mean@{spec[6:]}")
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise sv.InvalidInput(f"embedding {spec!r} is not valid; expected glove, glove:X.Y.Z "
                              "or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise sv.InvalidInput(f"embedding {spec!r} cannot be loaded: {e}") from e
    return factory()


def _read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise sv.InvalidInput(f"{path} line {n} is not valid JSON: {e}") from None


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


@click.command("sync", cls=Command)
@click.argument("namespace")
@click.option("--jsonl", "jsonl", required=True, type=click.Path(exists=True, dir_okay=False),
              help='Records, one JSON object a line: {"id", "text", "metadata"?, "updated_at"?}.')
@click.option("--mode", type=click.Choice(["incremental", "full", "scoped_full"]),
              default="incremental", show_default=True,
              help="full: delete rows absent from the file; scoped_full: only within the "
                   "--source-key values seen.")
@click.option("--source-key", default=None, help="Metadata key naming each record's source.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--create", is_flag=True, help="Create the namespace if it does not exist.")
@embedding_option
@db_option()
@output_option
def sync_cmd(namespace, jsonl, mode, source_key, batch_size, create, embedding_spec, db_path,
             as_json):
    """Sync NAMESPACE with a JSONL file by content hash: embeds only new or changed texts."""
    fn = load_embedding(embedding_spec)
    total = _count_lines(jsonl)
    with open_db(db_path) as db:
        try:
            ns = db.namespace(namespace, embedding=fn)
        except sv.NamespaceNotFound:
            if not create:
                raise
            ns = db.create_namespace(namespace, embedding=fn)
        with click.progressbar(length=total, label="syncing", file=sys.stderr,
                               show_pos=True) as bar:
            state = {"done": 0}

            def progress(done):
                bar.update(done - state["done"])
                state["done"] = done
            report = ns.sync(_read_jsonl(jsonl), mode=mode, source_key=source_key,
                             batch_size=batch_size, progress=progress)
    data = report.to_dict()
    data["seconds"] = round(data["seconds"], 3)
    emit(data, as_json)


@click.command("query-text", cls=Command)
@click.argument("namespace")
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--where", "where_json", default=None, help="Metadata filter as JSON.")
@embedding_option
@db_option()
@output_option
def query_text_cmd(namespace, text, k, where_json, embedding_spec, db_path, as_json):
    """The k rows nearest to TEXT, embedded with the namespace's model."""
    fn = load_embedding(embedding_spec)
    where = None
    if where_json is not None:
        try:
            where = json.loads(where_json)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"{where_json!r} is not valid JSON: {e}",
                                     param_hint="--where")
    with open_db(db_path, must_exist=True) as db:
        hits = db.namespace(namespace, embedding=fn).query_text(
            text, k=k, where=where, include=("metadata", "documents"))
    emit([{"id": h.id, "distance": round(h.distance, 6), "document": h.document,
           "metadata": h.metadata} for h in hits], as_json,
         columns=["id", "distance", "document", "metadata"], empty="no results")


@click.command("freshness", cls=Command)
@click.option("--namespace", "-n", default=None, help="Only this namespace.")
@click.option("--max-age", type=float, default=None,
              help="Seconds after which a row counts as old (default: the threshold).")
@db_option()
@output_option
def freshness_cmd(namespace, max_age, db_path, as_json):
    """Rows by another model, old rows, source changed after embedding, backlog and ETA."""
    with open_db(db_path, readonly=True) as db:
        reports = db.freshness(namespace, max_age=max_age)
    emit([r.to_dict() for r in reports], as_json,
         columns=["namespace", "version", "model", "rows", "with_provenance", "stale_model",
                  "older_than_max_age", "source_changed", "pending", "migration", "backlog",
                  "eta_seconds"], empty="no namespaces")


@click.command("cost", cls=Command)
@click.option("--window", default=None, help="1h, 1d or seconds (default: the whole ledger).")
@db_option()
@output_option
def cost_cmd(window, db_path, as_json):
    """Embedding calls, tokens, cost, queries and stored bytes per namespace and model."""
    with open_db(db_path, readonly=True) as db:
        report = db.cost(window)
    if as_json:
        click.echo(dumps(report.to_dict(), indent=2))
        return
    emit([{"namespace": ln.namespace, "model": ln.model, "calls": ln.embedding_calls,
           "texts": ln.texts, "tokens": ln.tokens, "cost": round(ln.cost, 6),
           "queries": ln.queries, "stored_bytes": ln.stored_bytes,
           "cost_per_query": None if ln.cost_per_query is None else
           round(ln.cost_per_query, 8)} for ln in report.lines], False,
         columns=["namespace", "model", "calls", "texts", "tokens", "cost", "queries",
                  "stored_bytes", "cost_per_query"], empty="nothing recorded")


@click.group("budget", cls=Group)
def budget_group():
    """Token and cost budgets (checked before a model is called)."""


@budget_group.command("set", cls=Command)
@click.option("--namespace", default=None, help="Only this namespace (default: all).")
@click.option("--model", default=None, help="Only this model (default: all).")
@click.option("--max-tokens", type=click.IntRange(min=0), default=None)
@click.option("--max-cost", type=click.FloatRange(min=0), default=None)
@click.option("--period", type=click.Choice(["hour", "day", "month", "total"]), default="day",
              show_default=True)
@click.option("--soft", is_flag=True, help="Only alert past the limit (default: refuse).")
@click.option("--remove", is_flag=True, help="Remove the budget of this scope.")
@db_option()
@output_option
def budget_set(namespace, model, max_tokens, max_cost, period, soft, remove, db_path,
               as_json):
    """Set (or --remove) the budget of a namespace/model scope."""
    with open_db(db_path) as db:
        budget = db.set_budget(namespace=namespace, model=model, max_tokens=max_tokens,
                               max_cost=max_cost, period=period, hard=not soft, remove=remove)
    emit({**budget.to_dict(), "removed": remove}, as_json)


@budget_group.command("list", cls=Command)
@db_option()
@output_option
def budget_list(db_path, as_json):
    """Budgets and their use in the current period."""
    with open_db(db_path, readonly=True) as db:
        rows = db.budgets()
    emit(rows, as_json, columns=["namespace", "model", "period", "hard", "max_tokens",
                                 "max_cost", "used_tokens", "used_cost", "used_ratio"],
         empty="no budgets")


@click.group("limit", cls=Group)
def limit_group():
    """Rate limits (token buckets) per namespace and operation."""


@limit_group.command("set", cls=Command)
@click.argument("namespace")
@click.argument("op", type=click.Choice(["query", "write", "embed"]))
@click.argument("per_second", type=click.FloatRange(min=0))
@click.option("--burst", type=click.FloatRange(min=1), default=None,
              help="Tokens saved up at most (default: one second's worth).")
@click.option("--wait", is_flag=True, help="Callers wait instead of getting RateLimited.")
@db_option()
@output_option
def limit_set(namespace, op, per_second, burst, wait, db_path, as_json):
    """Limit OP on NAMESPACE to PER_SECOND (0 removes the limit)."""
    with open_db(db_path) as db:
        limit = db.set_rate_limit(namespace, op, per_second, burst, wait=wait)
    emit(limit.to_dict() if limit else {"namespace": namespace, "op": op, "removed": True},
         as_json)


@limit_group.command("list", cls=Command)
@db_option()
@output_option
def limit_list(db_path, as_json):
    """The configured rate limits."""
    with open_db(db_path, readonly=True) as db:
        rows = [lim.to_dict() for lim in db.rate_limits()]
    emit(rows, as_json, columns=["namespace", "op", "per_second", "burst", "wait"],
         empty="no rate limits")


@click.group("migrate", cls=Group)
def migrate_group():
    """Model migration: plan, start (back-fill), status, shadow, promote, rollback, abort."""


def _status(m, as_json):
    data = m.status()
    if as_json:
        click.echo(dumps(data, indent=2))
        return
    emit({k: data[k] for k in ("namespace", "state", "from_version", "to_version",
                               "from_model", "to_model", "rows_done", "remaining", "embedded",
                               "skipped", "tokens", "cost", "not_migratable", "dual_write",
                               "eta_seconds")}, False)


@migrate_group.command("plan", cls=Command)
@click.argument("namespace")
@embedding_option
@db_option()
@output_option
def migrate_plan(namespace, embedding_spec, db_path, as_json):
    """Rows, tokens, cost and time a migration of NAMESPACE to --embedding would take
    (nothing is started)."""
    from simplevector.ops.migration import estimate
    fn = load_embedding(embedding_spec)
    with open_db(db_path, readonly=True) as db:
        emit(estimate(db, namespace, fn), as_json)


@migrate_group.command("start", cls=Command)
@click.argument("namespace")
@embedding_option
@click.option("--index", default=None, help="Index spec of the new version (default: inherited).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--max-batches", type=click.IntRange(min=1), default=None,
              help="Stop after this many batches (run again to continue).")
@db_option()
@output_option
def migrate_start(namespace, embedding_spec, index, batch_size, max_batches, db_path, as_json):
    """Start (or resume) migrating NAMESPACE to --embedding and run the back-fill."""
    fn = load_embedding(embedding_spec)
    with open_db(db_path) as db:
        m = db.migrate(namespace, embedding=fn, index=index)
        with click.progressbar(length=max(1, db.engine.namespace(namespace).count()),
                               label="back-filling", file=sys.stderr,
                               show_pos=True) as bar:
            state = {"done": 0}

            def progress(done, total):
                bar.update(done - state["done"])
                state["done"] = done
            m.run(batch_size=batch_size, max_batches=max_batches, progress=progress)
        _status(m, as_json)


@migrate_group.command("status", cls=Command)
@click.argument("namespace")
@db_option()
@output_option
def migrate_status(namespace, db_path, as_json):
    """State, progress, cost and ETA of NAMESPACE's migration (the latest one)."""
    with open_db(db_path, readonly=True) as db:
        found = db.migrations(namespace)
        if not found:
            raise sv.MigrationError(f"namespace {namespace!r} has no migration")
        _status(found[-1], as_json)


@migrate_group.command("shadow", cls=Command)
@click.argument("namespace")
@embedding_option
@click.option("--old-embedding", "old_spec", default="glove", show_default=True,
              help="The live version's embedding function (same SPEC forms).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True)
@db_option()
@output_option
def migrate_shadow(namespace, embedding_spec, old_spec, k, samples, db_path, as_json):
    """Shadow queries against both versions: overlap@k, new recall, latency of each."""
    with open_db(db_path) as db:
        db.namespace(namespace, embedding=load_embedding(old_spec))
        m = db.migrate(namespace, embedding=load_embedding(embedding_spec))
        report = m.shadow(k=k, samples=samples)
    emit(report.to_dict(), as_json)


def _transition(name, help_text, call):
    @migrate_group.command(name, cls=Command, help=help_text)
    @click.argument("namespace")
    @db_option()
    @output_option
    def command(namespace, db_path, as_json):
        with open_db(db_path, must_exist=True) as db:
            m = db.migration(namespace)
            call(m)
            _status(m, as_json)
    return command


@migrate_group.command("promote", cls=Command)
@click.argument("namespace")
@click.option("--force", is_flag=True, help="Promote even with rows that have no text.")
@db_option()
@output_option
def migrate_promote(namespace, force, db_path, as_json):
    """Point NAMESPACE at the migrated version (after a complete back-fill)."""
    with open_db(db_path, must_exist=True) as db:
        m = db.migration(namespace)
        m.promote(force=force)
        _status(m, as_json)


migrate_rollback = _transition("rollback", "Point NAMESPACE back at the previous version.",
                               lambda m: m.rollback())
migrate_abort = _transition("abort", "Stop NAMESPACE's migration before promotion and drop "
                            "the new version.", lambda m: m.abort())


COMMANDS = (sync_cmd, query_text_cmd, freshness_cmd, cost_cmd, budget_group, limit_group,
            migrate_group)


def register(group: click.Group) -> click.Group:
    for command in COMMANDS:
        group.add_command(command)
    return group
