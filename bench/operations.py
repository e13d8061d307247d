"""The operations measured at one size: each is the collection's playbook against the native tool doing the same
job (the table in ``SIDES``), run alternately by ``measure.measure_operation``."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from dataclasses import dataclass

from measure import BenchError, Operation, Sample, Side, run_commands
from servers import PG_BIN, Cluster, Redis

SIDES = """\
| operation | tool (ansible-playbook ...) | baseline |
|---|---|---|
| DB backup | `backup.yml -e skip_redis=true -e skip_config=true` | `pg_dump -Fd -j N`, then `openssl dgst -sha256` of every file it wrote |
| DB restore | `restore_db.yml` onto a fresh cluster | `psql` (the `christmas` role with its password) + `pg_restore -j N --create -d postgres` onto a fresh cluster, of the very dump the tool restores |
| Redis backup | `backup.yml -e skip_db=true -e skip_config=true` | `redis-cli --rdb FILE` |
| Redis restore | `restore_redis.yml` onto a fresh empty server | the RDB copied into a new server's directory, loaded at start: time until PING answers and `loading:0` |
| config backup | `backup.yml -e skip_db=true -e skip_redis=true` | `tar -cf` of the tree |
| config restore | `restore_config.yml` into a new directory | `tar -xf` into a new directory |
| verify | `verify_backup.yml` (deep, its default) and `verify_backup.yml -e deep=false`, on a set of all three components | `openssl dgst -sha256` of exactly the files the manifest lists |
| fixed cost | a play with one `debug` task against the same inventory; `backup.yml --check` | - |
"""  # noqa: E501 - a markdown table

SKIP = {"db": ("-e", "skip_redis=true", "-e", "skip_config=true"),
        "redis": ("-e", "skip_db=true", "-e", "skip_config=true"),
        "config": ("-e", "skip_db=true", "-e", "skip_redis=true")}


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

    def operations(self, with_fixed_cost):
        made = [self.db_backup(), self.db_restore(), *self.db_backup_same_level(), self.redis_backup(),
                self.redis_restore(), self.config_backup(), self.config_restore(), self.verify()]
        return ([self.fixed_cost()] if with_fixed_cost else []) + made

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

        return Operation("DB restore", "db", target=1.10, sides=[
            Side("restore_db.yml", measure=self.tool_db_restore, prepare=prepare, check=self.restored_db_check,
                 cleanup=cleanup),
            Side("psql + pg_restore --create", measure=self.baseline_db_restore, prepare=prepare,
                 check=self.restored_db_check, cleanup=cleanup, tool=False),
        ])

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
