"""STAND-IN for TimescaleDB's background worker launcher, for the SQL-only stand-in extension
(tests/fixtures/timescaledb_standin). Not TimescaleDB: a thread of the test process that reads the extension's
start/stop/restart messages (files in the cluster's ``timescaledb_standin.launcher_dir``) and holds one scheduler
session per database, named as TimescaleDB's scheduler is in pg_stat_activity. Like the real launcher, it marks a
database disabled when its scheduler is killed (as a swap's pg_terminate_backend does) and starts none for it again
until told to."""

from __future__ import annotations

import os
import shutil
import threading

import psycopg2

SCHEDULER = "TimescaleDB Background Worker Scheduler"
POLL = 0.02


class StandinLauncher(threading.Thread):
    def __init__(self, cluster, message_dir):
        super().__init__(daemon=True)
        self.cluster, self.message_dir = cluster, message_dir
        self.state = {}  # database oid -> "starting", "running", "stopped" or "disabled"
        self.schedulers = {}  # database oid -> the scheduler's connection
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(POLL):
            for name in sorted(os.listdir(self.message_dir)):
                path = os.path.join(self.message_dir, name)
                with open(path, encoding="utf-8") as handle:
                    message = handle.read()
                if not message.endswith("\n"):  # COPY is still writing it
                    break
                os.unlink(path)
                action, oid = message.split()
                self._handle(action, int(oid))
            for oid, conn in list(self.schedulers.items()):
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                except psycopg2.Error:
                    del self.schedulers[oid]
                    self.state[oid] = "disabled"
            for oid in [oid for oid, state in self.state.items() if state == "starting"]:
                self._start_scheduler(oid)

    def _handle(self, action, oid):
        if action in ("stop", "restart") and oid in self.schedulers:
            self.schedulers.pop(oid).close()
        if action in ("start", "restart"):
            self.state[oid] = "running" if oid in self.schedulers else "starting"
        else:
            self.state[oid] = "stopped"

    def _start_scheduler(self, oid):
        """Until the extension that asked for it is committed (or the database is gone), it fails: tried again."""
        rows = self.cluster.sql("SELECT datname FROM pg_database WHERE oid = %d" % oid)
        if not rows:
            del self.state[oid]
            return
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=self.cluster.port, user="postgres",
                                    password=self.cluster.password, dbname=rows[0][0], application_name=SCHEDULER)
        except psycopg2.Error:
            return
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT _timescaledb_functions.standin_run_jobs()")
        except psycopg2.Error:
            conn.close()
            return
        self.schedulers[oid], self.state[oid] = conn, "running"

    def state_of(self, dbname):
        rows = self.cluster.sql("SELECT oid FROM pg_database WHERE datname = '%s'" % dbname)
        return self.state.get(rows[0][0]) if rows else None

    def stop(self):
        self._done.set()
        self.join(timeout=10)
        for conn in self.schedulers.values():
            conn.close()
        shutil.rmtree(self.message_dir, ignore_errors=True)


# The platform's market_data as a hypertable of 9 chunks of 10 minutes, 6 of them compressed, with a continuous
# aggregate and its jobs (on a cluster that preloads the stand-in, over conftest's PLATFORM_SQL).
HYPERTABLE_SQL = """
CREATE EXTENSION timescaledb VERSION '2.14.2';
SELECT create_hypertable('market_data', 'ts');
SELECT _timescaledb_functions.create_chunk('market_data', t, t + interval '10 minutes')
FROM generate_series(timestamptz '2026-11-01 00:00:00+00', timestamptz '2026-11-01 01:20:00+00',
                     interval '10 minutes') AS t;
SELECT compress_chunk(format('%I.%I', chunk_schema, chunk_name)::regclass)
FROM (SELECT * FROM timescaledb_information.chunks ORDER BY chunk_name LIMIT 6) AS oldest;
SELECT _timescaledb_functions.create_continuous_aggregate('market_data_1h', 'market_data',
  'SELECT date_trunc(''hour'', ts) AS bucket, symbol, avg(price) AS price FROM market_data GROUP BY 1, 2');
SELECT _timescaledb_functions.add_job('policy_compression', 'market_data', 'Compression Policy [1000]');
SELECT _timescaledb_functions.add_job('policy_refresh_continuous_aggregate', 'market_data',
                                      'Refresh Continuous Aggregate Policy [1001]');
"""
EXPECTED_FACTS = {
    "hypertables": {"public.market_data": {"chunks": 9, "compressed_chunks": 6}},
    "continuous_aggregates": {"public.market_data_1h": {"hypertable": "public.market_data"}},
    "jobs": {"1000": {"proc": "_timescaledb_functions.policy_compression", "scheduled": True,
                      "hypertable": "public.market_data"},
             "1001": {"proc": "_timescaledb_functions.policy_refresh_continuous_aggregate", "scheduled": True,
                      "hypertable": "public.market_data"}},
}


def catalog(cluster, dbname="christmas"):
    """The stand-in's catalog rows and its chunks' row counts, read from the server."""
    tables = ("_timescaledb_catalog.hypertable", "_timescaledb_catalog.chunk", "_timescaledb_catalog.continuous_agg",
              "_timescaledb_config.bgw_job")
    state = {table: cluster.sql("SELECT * FROM %s ORDER BY 1" % table, dbname=dbname) for table in tables}
    state["chunk rows"] = cluster.sql(
        "SELECT tableoid::regclass::text, count(*) FROM market_data GROUP BY 1 ORDER BY 1", dbname=dbname)
    return state
