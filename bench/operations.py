"""The operations measured at one size: each is the collection's playbook against the native tool doing the same
job (the table in ``SIDES``), run alternately by ``measure.measure_operation``."""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from dataset import MARKET_SQL, SYMBOLS
from measure import BenchError, Operation, Sample, Side, run_commands
from plays import role_default
from servers import PG_BIN, REGISTRY, Cluster, PgCtlCluster, Redis

SIDES = """\
| operation | tool (ansible-playbook ...) | baseline |
|---|---|---|
| DB backup | `backup.yml -e skip_redis=true -e skip_config=true` | `pg_dump -Fd -j N`, then `openssl dgst -sha256` of every file it wrote |
| DB restore | `restore_db.yml` onto a fresh cluster | `psql` (the `christmas` role with its password) + `pg_restore -j N --create -d postgres` onto a fresh cluster, of the very dump the tool restores |
| DB PITR restore | `restore_db.yml -e target_time=T` onto a new cluster at the protected cluster's data directory (copied from an initdb'ed template and started), none of whose files pgBackRest's `--delta` finds current, so the whole database is restored | as postgres, with the tool's config file and repository: `pgbackrest restore --type=time --target=T --target-action=promote` into an empty data directory, `pg_ctl start`, then `SELECT pg_is_in_recovery()` every 10 ms until false |
| DB delta restore | `restore_db.yml -e target_time=T` onto the cluster as it stood after the writes past T, running: undoing a bad change in place | the same cluster, the same way: `pg_ctl stop`, `pgbackrest restore --delta --type=time --target=T --target-action=promote`, `pg_ctl start`, `SELECT pg_is_in_recovery()` every 10 ms until false |
| Redis backup | `backup.yml -e skip_db=true -e skip_config=true` | `redis-cli --rdb FILE` |
| Redis restore | `restore_redis.yml` onto a fresh empty server | the RDB copied into a new server's directory, loaded at start: time until PING answers and `loading:0` |
| config backup | `backup.yml -e skip_db=true -e skip_redis=true` | `tar -cf` of the tree |
| config restore | `restore_config.yml` into a new directory | `tar -xf` into a new directory |
| verify | `verify_backup.yml` (deep, its default) and `verify_backup.yml -e deep=false`, on a set of all three components | `openssl dgst -sha256` of exactly the files the manifest lists |
| fixed cost | a play with one `debug` task against the same inventory; `backup.yml --check` | - |
"""  # noqa: E501 - a markdown table

OPERATIONS = ("fixed cost", "DB backup", "DB restore", "DB backup, same level", "DB PITR restore", "DB delta restore",
              "Redis backup", "Redis restore", "config backup", "config restore", "verify")  # for --operation
SKIP = {"db": ("-e", "skip_redis=true", "-e", "skip_config=true"),
        "redis": ("-e", "skip_db=true", "-e", "skip_config=true"),
        "config": ("-e", "skip_db=true", "-e", "skip_redis=true")}

# Continuous protection: writes into the protected cluster before the target second T (a trading session's new ticks,
# 1 % of market_data, and 10 % more orders) and after it (the kind of bad change a restore to T undoes).
ORDERS_SQL = """
INSERT INTO orders (symbol, side, qty, price)
SELECT 'SYM' || lpad((i % {symbols})::text, 3, '0'), CASE WHEN i % 3 = 0 THEN 'sell' ELSE 'buy' END, 1 + i % 100, 100
FROM generate_series(1, {orders}) AS i
"""
AFTER_TARGET_SQL = "DELETE FROM positions; DELETE FROM orders WHERE id % 2 = 0"
COUNTS_SQL = ("SELECT (SELECT count(*) FROM market_data), (SELECT count(*) FROM orders), "
              "(SELECT count(*) FROM positions)")
PGBACKREST_POLL = 0.05


def key_counts(server):
    """Keys per logical database (0 and 1, where the platform's keys live), as the marker records them."""
    counts = {}
    for db in (0, 1):
        client = server.client(db)
        try:
            counts[str(db)] = client.dbsize()
        finally:
            client.close()
    return counts


def next_whole_second():
    """The next whole second T, waited out: every write so far committed before T, every later one commits after."""
    target = int(time.time()) + 1
    time.sleep(target - time.time() + 0.05)
    return target


def wait_for_pgbackrest(config_file, timeout=60):
    """Until no pgBackRest process of ``config_file`` runs: the archiver's asynchronous archive-push can outlive a
    stopped server for a moment, and must not write into the repository the next run starts from."""
    option = ("--config=" + config_file).encode()
    deadline = time.monotonic() + timeout
    while any(option in _cmdline(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()):
        if time.monotonic() > deadline:
            raise BenchError("pgBackRest processes of %s still run after %d s" % (config_file, timeout))
        time.sleep(PGBACKREST_POLL)


def _cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


@dataclass
class Options:
    jobs: int
    compress: int = None  # both sides at this level; None: each side at its own default
    tool_compress: int = None  # the level the tool dumps at


class Suite:
    """Builds the operations for one dataset; the source servers are already running."""

    def __init__(self, dataset, run_dir, options, playbooks, source, redis_server, template):
        self.dataset, self.run_dir, self.options = dataset, run_dir, options
        self.playbooks, self.source, self.redis, self.template = playbooks, source, redis_server, template
        self.pg_env = dict(os.environ, PGPASSFILE=self._write_pgpass(), PGHOST="127.0.0.1", PGUSER="postgres")
        self.globals_sql = self._write_globals_sql()
        self.protected = PgCtlCluster(self.path("pitr", "pg"), dataset.passwords["postgres"])
        self.pitr = None  # what protect() made: the target second and the row counts at it

    # ------------------------------------------------------------ paths and helpers

    def path(self, *parts):
        return os.path.join(self.run_dir, *parts)

    def log(self, name, run):
        return self.path("logs", "%s-%s-%d.log" % (self.dataset.spec.name, name.replace(" ", "_"), run + 1))

    def empty_dir(self, *parts):
        path = self.path(*parts)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, 0o700)
        return path

    def _write_pgpass(self):
        path = self.path("pgpass")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("127.0.0.1:*:*:postgres:%s\n" % self.dataset.passwords["postgres"])
        return path

    def _write_globals_sql(self):
        """What pg_dumpall --globals-only would give for the platform role: its name and SCRAM hash."""
        password_hash = self.source.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'christmas'")[0][0]
        path = self.path("globals.sql")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("CREATE ROLE christmas LOGIN PASSWORD '%s';\n" % password_hash)
        return path

    def compress_args(self, level=None):
        level = self.options.compress if level is None else level
        return [] if level is None else ["--compress=%d" % level]

    def backup_vars(self, component):
        return {"christmas_backup_dir": self.path("backups", component),
                "christmas_config_dir": self.dataset.config_dir}

    def tool_backup(self, component, run):
        """backup.yml of one component into an emptied backup directory."""
        self.empty_dir("backups", component)
        return self.playbooks.run("backup.yml", self.backup_vars(component), *SKIP[component],
                                  log_path=self.log("%s backup tool" % component, run))

    def fresh_cluster(self, run):
        return Cluster(self.path("targets", "pg-%d" % run), self.dataset.passwords["postgres"]).init(
            template=self.template).start()

    def fresh_redis(self, run):
        return Redis(self.path("targets", "redis-%d" % run), self.redis.password).start()

    def operations(self, with_fixed_cost, only=()):
        """The operations to measure, in OPERATIONS' order: all of them, or those named in ``only``."""
        made = [self.db_backup(), self.db_restore(), *self.db_backup_same_level(), self.db_pitr_restore(),
                self.db_delta_restore(), self.redis_backup(),
                self.redis_restore(), self.config_backup(), self.config_restore(), self.verify()]
        made = ([self.fixed_cost()] if with_fixed_cost else []) + made
        return [operation for operation in made if not only or operation.name in only]

    # ------------------------------------------------------------ database

    def pg_dump_argv(self, dump_dir, level=None):
        return [os.path.join(PG_BIN, "pg_dump"), "--format=directory", "--jobs=%d" % self.options.jobs,
                *self.compress_args(level), "--port=%d" % self.source.port, "--dbname=christmas",
                "--file=%s" % dump_dir]

    def baseline_db_backup(self, run, level=None):
        dump_dir = self.path("baseline", "db.dump")
        shutil.rmtree(dump_dir, ignore_errors=True)
        os.makedirs(os.path.dirname(dump_dir), exist_ok=True)
        return run_commands([self.pg_dump_argv(dump_dir, level),
                             lambda: ["openssl", "dgst", "-sha256", *sorted(glob.glob(os.path.join(dump_dir, "*")))]],
                            self.log("db backup baseline" + ("" if level is None else " Z%d" % level), run),
                            env=self.pg_env)

    def db_backup(self):
        return Operation("DB backup", "db", target=1.10, sides=[
            Side("backup.yml (db)", measure=lambda run: self.tool_backup("db", run)),
            Side("pg_dump -Fd + openssl", measure=self.baseline_db_backup, tool=False),
        ])

    def db_backup_same_level(self):
        """With the tool at its own compression level and pg_dump at its default, also compare at the same level:
        that ratio is the cost of the automation alone."""
        level = self.options.tool_compress
        if self.options.compress is not None or level is None or level < 0:
            return []
        return [Operation("DB backup, same level", "db", sides=[
            Side("backup.yml (db)", measure=lambda run: self.tool_backup("db", run)),
            Side("pg_dump -Fd -Z%d + openssl" % level, measure=lambda run: self.baseline_db_backup(run, level),
                 tool=False),
        ])]

    def tool_db_restore(self, context):
        run, cluster = context
        variables = {**self.backup_vars("db"), "christmas_db_port": cluster.port,
                     "christmas_db_admin_password": self.dataset.passwords["postgres"]}
        return self.playbooks.run("restore_db.yml", variables, log_path=self.log("db restore tool", run))

    def baseline_db_restore(self, context):
        run, cluster = context
        psql = [os.path.join(PG_BIN, "psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
                "--port=%d" % cluster.port, "--dbname=postgres", "--file=%s" % self.globals_sql]
        pg_restore = [os.path.join(PG_BIN, "pg_restore"), "--jobs=%d" % self.options.jobs, "--exit-on-error",
                      "--create", "--port=%d" % cluster.port, "--dbname=postgres", self.tool_dump()]
        return run_commands([psql, pg_restore], self.log("db restore baseline", run), env=self.pg_env)

    def db_set(self):
        """Untimed, once: the set the restores load, when no DB backup run of this size left one (--operation)."""
        if not glob.glob(self.path("backups", "db", "set_*", "db.dump")):
            self.tool_backup("db", 0)

    def tool_dump(self):
        """The dump the tool restores: both sides of the restore load the same bytes."""
        found = glob.glob(self.path("backups", "db", "set_*", "db.dump"))
        if len(found) != 1:
            raise BenchError("expected one set in %s, found %d" % (self.path("backups", "db"), len(found)))
        return found[0]

    def restored_db_check(self, context):
        _run, cluster = context
        tables = cluster.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname="christmas")[0][0]
        if tables != 4:
            raise BenchError("the restored database has %d tables, expected 4" % tables)

    def db_restore(self):
        def prepare(run):
            return run, self.fresh_cluster(run)

        def cleanup(context):
            context[1].destroy()

        return Operation("DB restore", "db", target=1.10, setup=self.db_set, sides=[
            Side("restore_db.yml", measure=self.tool_db_restore, prepare=prepare, check=self.restored_db_check,
                 cleanup=cleanup),
            Side("psql + pg_restore --create", measure=self.baseline_db_restore, prepare=prepare,
                 check=self.restored_db_check, cleanup=cleanup, tool=False),
        ])

    # ------------------------------------------------------------ continuous protection (pgBackRest)

    def pitr_vars(self):
        """The protected cluster, and the database alone through the role's christmas_skip_* (archive.yml reads no
        skip_* extra variables)."""
        return {"christmas_backup_dir": self.path("pitr", "backups"), "christmas_config_dir": self.dataset.config_dir,
                "christmas_pg_data_dir": self.protected.data, "christmas_db_port": self.protected.port,
                "christmas_skip_redis": True, "christmas_skip_config": True}

    def pgbackrest_config(self):
        """The tool's pgBackRest config file, which the bare pgBackRest reads too."""
        return self.path("pitr", "backups", "pgbackrest.conf.d", "pgbackrest.conf")

    def protect(self):
        """Untimed, once per size: a copy of the source cluster run from its data directory; backup.yml with
        christmas_pg_data_dir (archiving on, the stanza, a physical backup), writes, archive.yml, the target second
        T, the writes a restore to T undoes, archive.yml. The backup directory and the cluster as they stand then
        are kept: every run starts from copies of them."""
        if self.pitr:
            return
        cluster, spec, log = self.protected, self.dataset.spec, self.log("pitr setup", 0)
        self.source.stop()  # a consistent copy
        try:
            cluster.init(template=self.source.data)
        finally:
            self.source.start()
        cluster.write_settings().start()
        self.playbooks.run("backup.yml", self.pitr_vars(), log_path=log)
        rows = self.dataset.facts["market_data_rows"]
        cluster.sql(MARKET_SQL.format(symbols=SYMBOLS, first=rows, last=rows + rows // 100 - 1)
                    + ";" + ORDERS_SQL.format(symbols=SYMBOLS, orders=spec.orders // 10), dbname="christmas")
        self.playbooks.run("archive.yml", self.pitr_vars(), log_path=log)
        expected = cluster.sql(COUNTS_SQL, dbname="christmas")[0]
        target = next_whole_second()
        cluster.sql(AFTER_TARGET_SQL, dbname="christmas")
        self.playbooks.run("archive.yml", self.pitr_vars(), log_path=log)
        cluster.stop()
        wait_for_pgbackrest(self.pgbackrest_config())
        os.makedirs(self.path("pitr", "kept"))
        for source, kept in ((cluster.data, "data"), (self.path("pitr", "backups"), "backups")):
            subprocess.run(["cp", "-a", source, self.path("pitr", "kept", kept)], check=True)
        self.pitr = {"target": target, "expected": list(expected)}

    def repo_bytes(self):
        """The pgBackRest repository after the setup: the physical backup and the WAL archived since."""
        top = self.path("pitr", "kept", "backups", "pgbackrest")
        return sum(os.path.getsize(os.path.join(base, name)) for base, _dirs, names in os.walk(top) for name in names)

    def pitr_target(self, run, start_from):
        """Untimed: the backup directory as protect() left it, and the protected cluster's data directory from
        ``start_from``: ``kept`` (the cluster after the writes past T, started), ``fresh`` (an initdb'ed cluster,
        started) or ``empty`` (a new directory; the timed part starts the server)."""
        cluster = self.protected
        shutil.rmtree(self.path("pitr", "backups"))
        subprocess.run(["cp", "-a", self.path("pitr", "kept", "backups"), self.path("pitr", "backups")], check=True)
        shutil.rmtree(cluster.data)
        if start_from == "empty":
            os.mkdir(cluster.data, 0o700)
            shutil.chown(cluster.data, "postgres", "postgres")
            REGISTRY.add(cluster)
        else:
            template = self.path("pitr", "kept", "data") if start_from == "kept" else self.template
            subprocess.run(["cp", "-a", template, cluster.data], check=True)
            if start_from == "fresh":
                cluster.write_settings()
            cluster.start()
        return run, cluster

    def pitr_cleanup(self, context):
        context[1].stop(mode="immediate")
        wait_for_pgbackrest(self.pgbackrest_config())

    def tool_pitr(self, context, name):
        run, _cluster = context
        target = datetime.datetime.fromtimestamp(self.pitr["target"], datetime.UTC).isoformat()
        return self.playbooks.run("restore_db.yml", self.pitr_vars(), "-e", "target_time=" + target,
                                  log_path=self.log("%s tool" % name, run))

    def baseline_pitr(self, context, name, delta=False):
        """pgBackRest run by hand, as postgres with the tool's config file: (stop,) restore to T, start, and the wait
        until the server has left recovery."""
        run, cluster = context
        restore = ["runuser", "-u", "postgres", "--", "pgbackrest", "--config=" + self.pgbackrest_config(),
                   "--stanza=" + role_default("christmas_pitr_stanza"), *(["--delta"] if delta else []),
                   "--type=time", "--target=" + time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(self.pitr["target"])),
                   "--target-action=promote", "restore"]
        started = time.monotonic()
        run_commands(([cluster.stop_command()] if delta else []) + [restore, cluster.start_command()],
                     self.log("%s baseline" % name, run))
        cluster.wait_promoted()
        return Sample(time.monotonic() - started)

    def restored_pitr_check(self, context):
        """The database as it stood at T: the platform's tables, the rows written before T, none of the changes
        after it, out of recovery."""
        self.restored_db_check(context)
        _run, cluster = context
        found = cluster.sql(COUNTS_SQL, dbname="christmas")[0]
        if list(found) != self.pitr["expected"] or cluster.sql("SELECT pg_is_in_recovery()")[0][0]:
            raise BenchError("restored to T, the database has (market_data, orders, positions) rows %s, expected %s"
                             % (list(found), self.pitr["expected"]))

    def pitr_operation(self, name, tool_from, baseline_from, baseline, delta):
        return Operation(name, "db", setup=self.protect, sides=[
            Side("restore_db.yml target_time=T", measure=lambda context: self.tool_pitr(context, name),
                 prepare=lambda run: self.pitr_target(run, tool_from), check=self.restored_pitr_check,
                 cleanup=self.pitr_cleanup),
            Side(baseline, measure=lambda context: self.baseline_pitr(context, name, delta),
                 prepare=lambda run: self.pitr_target(run, baseline_from), check=self.restored_pitr_check,
                 cleanup=self.pitr_cleanup, tool=False),
        ])

    def db_pitr_restore(self):
        return self.pitr_operation("DB PITR restore", "fresh", "empty", "pgbackrest restore --type=time", False)

    def db_delta_restore(self):
        return self.pitr_operation("DB delta restore", "kept", "kept", "pgbackrest restore --delta", True)

    # ------------------------------------------------------------ Redis

    def baseline_redis_backup(self, run):
        env = dict(os.environ, REDISCLI_AUTH=self.redis.password)
        rdb = self.path("baseline", "redis.rdb")
        os.makedirs(os.path.dirname(rdb), exist_ok=True)
        if os.path.exists(rdb):
            os.unlink(rdb)
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis.port), "--rdb", rdb]
        return run_commands([argv], self.log("redis backup baseline", run), env=env)

    def redis_backup(self):
        return Operation("Redis backup", "redis", target=1.25, sides=[
            Side("backup.yml (redis)", measure=lambda run: self.tool_backup("redis", run)),
            Side("redis-cli --rdb", measure=self.baseline_redis_backup, tool=False),
        ])

    def tool_redis_restore(self, context):
        run, server = context
        return self.playbooks.run("restore_redis.yml", {
            **self.backup_vars("redis"), "christmas_redis_port": server.port,
            "christmas_redis_password": server.password}, log_path=self.log("redis restore tool", run))

    def prepare_rdb_load(self, run):
        """A server directory holding the baseline's RDB; the server is started by the timed part."""
        server = Redis(self.path("targets", "redis-load-%d" % run), self.redis.password)
        os.makedirs(server.root, 0o700)
        shutil.copyfile(self.path("baseline", "redis.rdb"), os.path.join(server.root, "dump.rdb"))
        return run, server

    def baseline_redis_restore(self, context):
        _run, server = context
        started = time.monotonic()
        server.launch()
        server.wait_ready()
        return Sample(time.monotonic() - started)

    def restored_redis_check(self, context):
        _run, server = context
        expected = self.dataset.facts["redis_keys_per_db"]
        found = key_counts(server)
        if found != expected:
            raise BenchError("Redis holds %s keys per database after the restore, expected %s" % (found, expected))

    def redis_restore(self):
        def cleanup(context):
            context[1].destroy()

        return Operation("Redis restore", "redis", sides=[
            Side("restore_redis.yml", measure=self.tool_redis_restore,
                 prepare=lambda run: (run, self.fresh_redis(run)), check=self.restored_redis_check, cleanup=cleanup),
            Side("RDB load at server start", measure=self.baseline_redis_restore, prepare=self.prepare_rdb_load,
                 check=self.restored_redis_check, cleanup=cleanup, tool=False),
        ])

    # ------------------------------------------------------------ config

    def baseline_config_backup(self, run):
        archive = self.path("baseline", "config.tar")
        os.makedirs(os.path.dirname(archive), exist_ok=True)
        source = self.dataset.config_dir
        argv = ["tar", "-cf", archive, "-C", os.path.dirname(source), os.path.basename(source)]
        return run_commands([argv], self.log("config backup baseline", run))

    def config_backup(self):
        return Operation("config backup", "config", sides=[
            Side("backup.yml (config)", measure=lambda run: self.tool_backup("config", run)),
            Side("tar -cf", measure=self.baseline_config_backup, tool=False),
        ])

    def tool_config_restore(self, context):
        run, dest = context
        return self.playbooks.run("restore_config.yml", {**self.backup_vars("config"), "christmas_config_dir": dest},
                                  log_path=self.log("config restore tool", run))

    def baseline_config_restore(self, context):
        run, dest = context
        os.makedirs(dest, 0o700)
        argv = ["tar", "-xf", self.path("baseline", "config.tar"), "-C", dest]
        return run_commands([argv], self.log("config restore baseline", run))

    def restored_config_check(self, context):
        _run, dest = context
        found = sum(len(files) for _base, _dirs, files in os.walk(dest))
        if found < self.dataset.facts["config_files"]:
            raise BenchError("%d files restored into %s, expected %d" % (found, dest,
                                                                          self.dataset.facts["config_files"]))

    def config_restore(self):
        def cleanup(context):
            shutil.rmtree(context[1], ignore_errors=True)

        return Operation("config restore", "config", sides=[
            Side("restore_config.yml", measure=self.tool_config_restore, check=self.restored_config_check,
                 prepare=lambda run: (run, self.path("targets", "config-%d" % run)), cleanup=cleanup),
            Side("tar -xf", measure=self.baseline_config_restore, check=self.restored_config_check,
                 prepare=lambda run: (run, self.path("targets", "tar-%d" % run)), cleanup=cleanup, tool=False),
        ])

    # ------------------------------------------------------------ verification and fixed cost

    def full_backup(self):
        """One set of all three components, made once (untimed) for the verification runs."""
        self.empty_dir("backups", "full")
        self.playbooks.run("backup.yml", self.backup_vars("full"), log_path=self.log("full backup", 0))

    def manifest(self):
        found = sorted(glob.glob(self.path("backups", "full", "manifest_*.json")))
        if len(found) != 1:
            raise BenchError("expected one manifest in %s, found %d" % (self.path("backups", "full"), len(found)))
        with open(found[0], encoding="utf-8") as handle:
            return json.load(handle)

    def set_bytes(self):
        """The full set's size; None when no operation of this run made it (--operation)."""
        if not glob.glob(self.path("backups", "full", "manifest_*.json")):
            return None
        return sum(artifact["size"] for artifact in self.manifest()["artifacts"])

    def tool_verify(self, run, *extra):
        label = "verify tool%s" % (" shallow" if extra else "")
        return self.playbooks.run("verify_backup.yml", self.backup_vars("full"), "-e", "manifest=latest", *extra,
                                  log_path=self.log(label, run))

    def baseline_verify(self, run):
        """openssl over exactly the files the manifest lists (their paths are relative to the backup directory)."""
        files = [os.path.join(self.path("backups", "full"), a["path"]) for a in self.manifest()["artifacts"]]
        return run_commands([["openssl", "dgst", "-sha256", *files]], self.log("verify baseline", run))

    def verify(self):
        return Operation("verify", "set", target=1.10, setup=self.full_backup, sides=[
            Side("verify_backup.yml (deep)", measure=self.tool_verify),
            Side("verify_backup.yml deep=false", measure=lambda run: self.tool_verify(run, "-e", "deep=false")),
            Side("openssl dgst -sha256", measure=self.baseline_verify, tool=False),
        ])

    def fixed_cost(self):
        def noop(run):
            return self.playbooks.run(self.playbooks.noop, {}, log_path=self.log("noop play", run))

        def check_mode(run):
            return self.playbooks.run("backup.yml", self.backup_vars("check"), "--check",
                                      log_path=self.log("backup check", run))

        return Operation("fixed cost", "none", sides=[
            Side("no-op play", measure=noop),
            Side("backup.yml --check", measure=check_mode),
        ])
