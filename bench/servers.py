"""Throwaway PostgreSQL clusters and Redis servers for the benchmark, all on 127.0.0.1, all stopped at exit.

Every server started here is recorded in ``REGISTRY``; ``REGISTRY.stop_all()`` (called from ``run.py`` in a
``finally`` that also runs on Ctrl-C and SIGTERM) stops whatever is still running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import redis  # noqa: E402
from sandbox import PG_BIN, PgCluster, free_port  # noqa: E402

# Benchmark settings, the same for the source cluster and every restore target. fsync=off comes from PgCluster.
PG_SETTINGS = (
    "shared_buffers=256MB",
    "maintenance_work_mem=256MB",
    "max_wal_size=8GB",
    "checkpoint_timeout=30min",
    "synchronous_commit=off",
    "full_page_writes=off",
    "autovacuum=off",
)
REDIS_READY_POLL = 0.002
PROMOTED_POLL = 0.01


class Registry:
    """The servers that are running now, so that any exit path can stop them."""

    def __init__(self):
        self.running = []

    def add(self, server):
        self.running.append(server)
        return server

    def discard(self, server):
        if server in self.running:
            self.running.remove(server)

    def stop_all(self):
        while self.running:
            server = self.running.pop()
            try:
                server.stop()
            except Exception as err:  # noqa: BLE001 - keep stopping the others
                print("warning: could not stop %s: %s" % (server, err), file=sys.stderr)


REGISTRY = Registry()


class Cluster(PgCluster):
    """A PostgreSQL 15 cluster with the benchmark settings; stops cleanly so a kept data directory stays valid."""

    def start(self, *settings):
        self.stop()  # a leftover of an interrupted run would make pg_ctl start fail
        super().start(*PG_SETTINGS, *settings)
        REGISTRY.add(self)
        return self

    def stop(self, mode="fast"):
        REGISTRY.discard(self)
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data,
                            "-m", mode, "-w", "stop"], capture_output=True, check=False)

    def destroy(self):
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __str__(self):
        return "PostgreSQL on port %d (%s)" % (self.port, self.root)


class PgCtlCluster(Cluster):
    """A cluster run from its data directory as the collection runs one (``christmas_pg_data_dir``, service manager
    none): its port, socket directory and the benchmark settings are in its own postgresql.conf, so a plain
    ``pg_ctl start`` (the bench's, or a playbook's restart or restore) brings back the same server."""

    def write_settings(self):
        settings = ("port=%d" % self.port, "unix_socket_directories=%s" % self.run_dir, "listen_addresses=127.0.0.1",
                    "fsync=off", *PG_SETTINGS)
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as handle:
            handle.write("".join("%s = '%s'\n" % tuple(setting.split("=", 1)) for setting in settings))
        return self

    def start_command(self):
        """argv of ``pg_ctl start`` as postgres, with no server options."""
        return ["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-l",
                self.log, "-w", "start"]

    def start(self):
        self.stop()
        subprocess.run(self.start_command(), check=True, capture_output=True)
        REGISTRY.add(self)
        return self

    def wait_promoted(self, timeout=600):
        """Poll until the server has left recovery: ``pg_is_in_recovery()`` is false."""
        deadline = time.monotonic() + timeout
        while not self.sql("SELECT NOT pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                raise TimeoutError("%s still in recovery after %d s" % (self, timeout))
            time.sleep(PROMOTED_POLL)


class Redis:
    """redis-server with its own directory (config, pid, log, dump.rdb); no RDB saves unless asked for."""

    def __init__(self, root, password, port=None):
        self.root, self.password = root, password
        self.port = port or free_port()
        self.pidfile = os.path.join(root, "redis.pid")

    def write_config(self):
        os.makedirs(self.root, exist_ok=True)
        lines = ["port %d" % self.port, "bind 127.0.0.1", "dir %s" % self.root, "daemonize yes",
                 "pidfile %s" % self.pidfile, "logfile %s/redis.log" % self.root, 'save ""', "appendonly no",
                 "requirepass %s" % self.password]
        path = os.path.join(self.root, "redis.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def launch(self):
        """Start the server and return at once (it may still be loading its RDB)."""
        self.stop()
        subprocess.run(["redis-server", self.write_config()], check=True, capture_output=True)
        REGISTRY.add(self)

    def wait_ready(self, timeout=600):
        """Poll until PING answers and INFO persistence says loading:0."""
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                try:
                    if client.ping() and client.info("persistence")["loading"] == 0:
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(REDIS_READY_POLL)
        finally:
            client.close()

    def start(self):
        self.launch()
        self.wait_ready()
        return self

    def client(self, db=0):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db)

    def pid(self):
        try:
            with open(self.pidfile, encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        """SIGTERM (with save "" nothing is written) and wait for the process to go."""
        REGISTRY.discard(self)
        pid = self.pid()
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        else:
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __str__(self):
        return "Redis on port %d (%s)" % (self.port, self.root)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_leftovers(path):
    """Stop servers an interrupted run left below ``path``, then delete it."""
    if not os.path.isdir(path):
        return
    for base, dirs, files in os.walk(path):
        if "postmaster.pid" in files:
            Cluster(os.path.dirname(base), "").stop(mode="immediate")
            dirs[:] = []
        elif "redis.pid" in files:
            Redis(base, "").stop()
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["PG_BIN", "REGISTRY", "Cluster", "PgCtlCluster", "Redis", "free_port", "remove_leftovers"]
