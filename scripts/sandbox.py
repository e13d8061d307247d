# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throwaway PostgreSQL 15 clusters and Redis servers on 127.0.0.1, for the demo sandbox and the tests."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg2
import redis

PG_BIN = os.environ.get("CHRISTMAS_PG_BIN", "/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(argv, **kwargs):
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, **kwargs)


def _give_to_postgres(path):
    entry = pwd.getpwnam("postgres")
    os.chown(path, entry.pw_uid, entry.pw_gid)


class PgCluster:
    """A cluster under ``root`` with password (SCRAM) logins over TCP; the superuser is ``postgres``."""

    def __init__(self, root, superuser_password, port=None, bin_dir=PG_BIN):
        self.root, self.password, self.bin_dir = root, superuser_password, bin_dir
        self.port = port or free_port()
        self.data = os.path.join(root, "data")
        self.run_dir = os.path.join(root, "run")
        self.log = os.path.join(root, "postgresql.log")

    def init(self, template=None):
        """initdb, or a copy of an initdb'ed ``template`` directory (much faster)."""
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o755)
        _give_to_postgres(self.root)
        if template:
            subprocess.run(["cp", "-a", template, self.data], check=True)
        else:
            os.mkdir(self.data, 0o700)
            _give_to_postgres(self.data)
            with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False) as handle:
                handle.write(self.password)
            _give_to_postgres(handle.name)
            try:
                _as_postgres([os.path.join(self.bin_dir, "initdb"), "-D", self.data, "-U", "postgres", "-E", "UTF8",
                              "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256",
                              "--pwfile=" + handle.name])
            finally:
                os.unlink(handle.name)
        os.makedirs(self.run_dir, exist_ok=True)
        _give_to_postgres(self.run_dir)
        return self

    def start_command(self, *settings):
        """argv that starts the cluster as postgres (what christmas_replication's start_command takes)."""
        options = "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off %s" % (
            self.port, self.run_dir, " ".join("-c " + s for s in settings))
        return ["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-l",
                self.log, "-w", "-o", options, "start"]

    def stop_command(self):
        """argv of a clean (fast) stop as postgres; fails when the cluster is not running, like pg_ctlcluster."""
        return ["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-m", "fast",
                "-w", "stop"]

    def start(self, *settings):
        subprocess.run(self.start_command(*settings), check=True, capture_output=True)
        return self

    def restart(self, *settings):
        subprocess.run(self.stop_command(), check=True, capture_output=True)
        return self.start(*settings)

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data,
                            "-m", "immediate", "-w", "stop"], capture_output=True, check=False)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, dbname="postgres", user="postgres", password=None):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname,
                                password=password if password is not None else self.password)
        conn.autocommit = True
        return conn

    def sql(self, statement, dbname="postgres", user="postgres", password=None):
        """Run SQL; return all rows of the last statement (or [] when it returns none)."""
        conn = self.connect(dbname, user, password)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


class RedisServer:
    def __init__(self, root, password=None, appendonly=False, port=None):
        self.root, self.password, self.appendonly = root, password, appendonly
        self.port = port or free_port()

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        conf = os.path.join(self.root, "redis.conf")
        lines = ["port %d" % self.port, "bind 127.0.0.1", "dir %s" % self.root, "daemonize yes",
                 "pidfile %s/redis.pid" % self.root, "logfile %s/redis.log" % self.root, 'save ""',
                 "appendonly %s" % ("yes" if self.appendonly else "no"),
                 "repl-diskless-sync-delay 0"]
        if self.password:
            lines.append("requirepass %s" % self.password)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        subprocess.run(["redis-server", conf], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self, db=0):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db)

    def pid(self):
        try:
            with open(os.path.join(self.root, "redis.pid"), encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, sig=signal.SIGTERM):
        """SIGTERM is a clean shutdown (the AOF is flushed; with save "" no RDB is written); SIGKILL is a crash."""
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            for _ in range(500):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            if os.path.exists(os.path.join(self.root, "redis.pid")):
                os.unlink(os.path.join(self.root, "redis.pid"))

    def restart(self):
        """Clean stop and start again: what survives is what the server had persisted."""
        self.stop()
        return self.start()

    def destroy(self):
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
