#!/usr/bin/env python3
"""``make bench``: the collection's playbooks against the native tools, at three data sizes.

For each size the platform data (PostgreSQL 15 database ``christmas``, a Redis keyspace in two logical databases, a
config tree) is generated once under the data directory and reused; throwaway servers are started on 127.0.0.1 on
copies of it, every operation runs ``--runs`` times per side alternating tool and baseline, and the medians, ratios,
peak memory and growth are printed and (unless ``--no-report``) written to docs/benchmarks.md and
docs/benchmarks.png. Every server started is stopped at exit, including on errors, Ctrl-C and SIGTERM.

    .venv/bin/python bench/run.py [--sizes small,medium,large] [--operation NAME ...] [--runs 3] [--jobs N]
                                  [--compress LEVEL] [--data-dir bench/data] [--no-report]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time

import dataset
import report
from measure import BenchError, measure_operation, stop_children
from operations import OPERATIONS, SIDES, Options, Suite, key_counts
from plays import ROOT, Playbooks, role_default
from servers import PG_BIN, PG_SETTINGS, REGISTRY, Redis, remove_leftovers

SCRATCH = ("backups", "baseline", "targets", "redis-source", "pitr")  # below the run directory, removed between sizes
SECRET_FILES = ("vars.json", "pgpass", "globals.sql", "signing.key")


def log(message):
    print(message, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium,large", help="comma-separated: small, medium, large")
    parser.add_argument("--operation", dest="operations", action="append", default=[], metavar="NAME",
                        help="measure only this operation (repeat for more), e.g. --operation 'DB PITR restore'")
    parser.add_argument("--runs", type=int, default=3, help="runs per side, tool and baseline alternating")
    parser.add_argument("--jobs", type=int, default=None, help="parallel jobs for both sides (default: the role's)")
    parser.add_argument("--compress", type=int, default=None, choices=range(10), metavar="LEVEL",
                        help="pg_dump --compress level for both sides (default: the role's level for the tool, "
                             "pg_dump's default for the baseline)")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "bench", "data"))
    parser.add_argument("--no-report", action="store_true", help="print the table, leave docs/ alone")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: write the report again from the last run's results.json (run with "
                             "the same --jobs and --compress)")
    args = parser.parse_args(argv)
    args.sizes = [name.strip() for name in args.sizes.split(",") if name.strip()]
    unknown = [name for name in args.sizes if name not in dataset.SIZES]
    if unknown or not args.sizes:
        parser.error("unknown size %s; choose from %s" % (", ".join(unknown), ", ".join(dataset.SIZES)))
    args.sizes = [name for name in dataset.SIZES if name in args.sizes]
    if args.runs < 1 or (args.jobs is not None and args.jobs < 1):
        parser.error("--runs and --jobs must be at least 1")
    unknown = [name for name in args.operations if name not in OPERATIONS]
    if unknown:
        parser.error("unknown operation %s; choose from %s" % (", ".join(unknown), ", ".join(OPERATIONS)))
    args.data_dir = os.path.abspath(args.data_dir)
    return args


def _terminate(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def playbook_settings(args, data, source, redis_server):
    """Variables of every playbook run: where the source servers are, their passwords, jobs and compression."""
    settings = {"christmas_db_port": source.port, "christmas_db_password": data.passwords["christmas"],
                "christmas_db_admin_password": data.passwords["postgres"], "christmas_redis_port": redis_server.port,
                "christmas_redis_password": redis_server.password}
    if args.jobs is not None:
        settings["christmas_jobs"] = args.jobs
    if args.compress is not None:
        settings["christmas_compress_level"] = args.compress
    return settings


def start_source_redis(data, run_dir):
    """A server on a copy of the kept RDB, with no delay before a replication transfer starts."""
    server = Redis(os.path.join(run_dir, "redis-source"), secrets.token_urlsafe(12))
    os.makedirs(server.root, 0o700)
    shutil.copyfile(data.rdb, os.path.join(server.root, "dump.rdb"))
    server.start()
    client = server.client()
    try:
        client.config_set("repl-diskless-sync-delay", 0)
    finally:
        client.close()
    found = key_counts(server)
    if found != data.facts["redis_keys_per_db"]:
        raise BenchError("the kept Redis data has %s keys per database, its marker says %s; remove %s to regenerate"
                         % (found, data.facts["redis_keys_per_db"], data.root))
    return server


def data_bytes(operation, data, suite):
    """The size the operation's time is set against: database, RDB, config tree, or the whole backup set."""
    if operation.component == "set":
        return suite.set_bytes()
    facts = {"db": "db_bytes", "redis": "rdb_bytes", "config": "config_bytes"}
    return data.facts[facts[operation.component]] if operation.component in facts else None


def measure_size(args, spec, context, with_fixed_cost):
    """Generate or reuse one size, start its servers, measure every operation; returns that size's results."""
    data_dir, run_dir, passwords, template, renewed = context
    begin = time.monotonic()
    load = [os.getloadavg()[0]]
    data = dataset.ensure_dataset(data_dir, spec, passwords, template, renewed, log)
    prepared = time.monotonic() - begin
    for name in SCRATCH:
        remove_leftovers(os.path.join(run_dir, name))
    source = data.cluster().start()
    redis_server = start_source_redis(data, run_dir)
    try:
        playbooks = Playbooks(run_dir, playbook_settings(args, data, source, redis_server))
        options = Options(args.jobs or role_default("christmas_jobs"), args.compress,
                          role_default("christmas_compress_level") if args.compress is None else args.compress)
        suite = Suite(data, run_dir, options, playbooks,
                      source, redis_server, template)
        operations = []
        for operation in suite.operations(with_fixed_cost, args.operations):
            log("%s: %s" % (spec.name, operation.name))
            samples = measure_operation(operation, args.runs, log)
            operations.append({
                "name": operation.name, "component": operation.component, "target": operation.target,
                "data_bytes": data_bytes(operation, data, suite),
                "sides": [report.side_result(side.label, side.tool, samples[side.label]) for side in operation.sides],
            })
        set_bytes, repo_bytes = suite.set_bytes(), suite.repo_bytes()
        load.append(os.getloadavg()[0])
    finally:
        redis_server.stop()
        source.stop()
    return {"dataset": data.facts, "operations": operations, "set_bytes": set_bytes, "repo_bytes": repo_bytes,
            "load_average": load, "prepare_seconds": round(prepared, 1),
            "measure_seconds": round(time.monotonic() - begin - prepared, 1)}


def run_all(args):
    os.makedirs(args.data_dir, 0o755, exist_ok=True)
    os.chmod(args.data_dir, 0o755)  # the postgres user reaches the clusters below
    run_dir = os.path.join(args.data_dir, "run")
    remove_leftovers(run_dir)
    os.makedirs(os.path.join(run_dir, "logs"), 0o755)
    os.chmod(run_dir, 0o755)
    passwords, renewed = dataset.load_passwords(args.data_dir)
    template = dataset.ensure_template(args.data_dir, passwords, renewed)
    context = (args.data_dir, run_dir, passwords, template, renewed)
    results = {}
    for index, name in enumerate(args.sizes):
        results[name] = measure_size(args, dataset.SIZES[name], context, with_fixed_cost=index == 0)
        log("%s: data ready in %.0f s, measured in %.0f s" % (
            name, results[name]["prepare_seconds"], results[name]["measure_seconds"]))
    return results


def settings_notes(args, results):
    jobs = args.jobs or role_default("christmas_jobs")
    compress = ("`--compress=%d` on both sides" % args.compress if args.compress is not None
                else "the role's `christmas_compress_level` (%d) for the tool, pg_dump's default (gzip level 6) for "
                     "the baseline, as each runs out of the box; the row `DB backup, same level` runs pg_dump at the "
                     "tool's level" % role_default("christmas_compress_level"))
    fixed = [name for name in report.ordered_sizes(results)
             if any(op["name"] == "fixed cost" for op in results[name]["operations"])]
    return [
        "%d runs per side and size, alternating tool and baseline (tool, baseline, tool, baseline, ...) so that drift "
        "hits both; medians are reported." % args.runs,
        "Parallel jobs: %d on both sides (`christmas_jobs`, `pg_dump`/`pg_restore --jobs`). Compression: %s." % (
            jobs, compress),
        "The playbooks otherwise run with the role's defaults, as an operator runs them: each backup is read back "
        "deeply after it is written (`christmas_verify_after_backup`), each restore deep-verifies the set and checks "
        "the target before changing it. The baselines do only their own job.",
        "PostgreSQL 15 runs with benchmark settings on every cluster: `fsync=off` and `%s`. They are not for "
        "production; they take disk-flush latency out of both sides alike." % "`, `".join(PG_SETTINGS),
        "Redis runs with `save \"\"` and `appendonly no`. The source server gets `CONFIG SET "
        "repl-diskless-sync-delay 0`, so that an RDB transfer (`redis-cli --rdb`) measures work and not Redis' "
        "default 5 s wait for more replicas.",
        "Restore targets are fresh: a PostgreSQL cluster copied from an initdb'ed template and started, or an empty "
        "Redis server. Creating them is not timed; they are deleted after each run.",
        "Times are wall-clock seconds from starting the command to its exit; for the tool that is the whole "
        "`ansible-playbook` run (local connection, pipelining), start-up included. The page cache is not dropped; "
        "both sides run the same way on data that fits in RAM. Between a run's preparation and the run, `sync` "
        "writes what the preparation and the run before wrote, so that no run pays for flushing another's writes.",
        "Peak memory: every 20 ms the processes below `ansible-playbook` are found through `/proc/*/stat` and, for "
        "the Python ones, VmHWM (the resident high-water mark) is read from `/proc/PID/status`. Module processes and "
        "the controller (with its forked workers) are reported separately, in MB of 10^6 bytes. The sampler runs "
        "during the baseline runs too, so its small cost falls on both sides.",
        "Module time: the same sampler times each module process (the AnsiballZ Python process that runs a module) "
        "from its start, read from `/proc/PID/stat`, to the last sample that saw it, plus one 20 ms interval; a "
        "side's module time is the sum over its module processes (a module's own Python children are not added "
        "again). It is exact to within about one sampling interval per module process.",
        "Continuous protection (*DB PITR restore*, *DB delta restore*), prepared once per size and not timed: a "
        "copy of the source cluster run from its own data directory with `pg_ctl` (its port, socket directory and "
        "the settings above in its postgresql.conf); `backup.yml` with `christmas_pg_data_dir` turns archiving on "
        "(one restart), creates the pgBackRest stanza and takes a full physical backup; then 1 % more market_data "
        "rows and 10 % more orders are written and `archive.yml` ships them, the next whole second is the target "
        "T, the positions and half the orders are deleted and `archive.yml` ships that. Both sides restore from "
        "that repository with the collection's config file (backups Zstandard, WAL gzip, `process-max=2`, "
        "asynchronous archive-get; "
        "`--jobs` does not change it). Before each run the backup directory (repository, config file, spool) is "
        "put back as it stood then, so the timeline a restore creates never reaches the next run; after each run "
        "the database must hold T's market_data, orders and positions counts and be out of recovery.",
        "The fixed cost is measured once, at the %s size. All traffic stays on 127.0.0.1." % (
            fixed[0] if fixed else "smallest"),
    ] + _unmeasured_note(results)


def _unmeasured_note(results):
    missing = [name for name in dataset.SIZES if name not in results]
    if not missing:
        return []
    return ["Sizes not measured in this run: %s. The report holds only the sizes measured (%s); figures of "
            "earlier runs are not carried over." % (", ".join(missing), ", ".join(report.ordered_sizes(results)))]


def finish(args, results):
    rows = report.summarise(results)
    report.print_table(rows, report.growth(results), report.against_logical(results))
    with open(os.path.join(args.data_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    _write_report(args, results)


def _write_report(args, results):
    if not args.no_report:
        settings = {"runs": args.runs, "notes": settings_notes(args, results), "sides": SIDES}
        report.write_docs(results, settings, report.machine(args.data_dir, PG_BIN), os.path.join(ROOT, "docs"))
        log("\nwrote docs/benchmarks.md and docs/benchmarks.png")


def cleanup(args):
    """Stop everything this run started; keep the logs, drop the scratch data and the files holding passwords."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    stop_children()
    REGISTRY.stop_all()
    run_dir = os.path.join(args.data_dir, "run")
    for name in SCRATCH:
        remove_leftovers(os.path.join(run_dir, name))
    for name in SECRET_FILES:
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.unlink(path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    if args.report_only:
        with open(os.path.join(args.data_dir, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        first = results[report.ordered_sizes(results)[0]]["operations"][0]["sides"][0]
        args.runs = len(first["seconds"])
        _write_report(args, results)
        return 0
    try:
        results = run_all(args)
    except BenchError as err:
        print("\nbench failed: %s" % err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        cleanup(args)
    finish(args, results)
    log("total %.0f s" % (time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
