#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The main job on a local sandbox: seed a platform, back it up, break everything, restore_full.yml, compare."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = os.path.join(ROOT, ".sandbox")
INVENTORY = os.path.join(ROOT, "inventories", "local", "hosts.yml")
VARS_FILE = os.path.join(SANDBOX, "vars.yml")
MARKET_ROWS = 200_000

SEED_SQL = """
CREATE TABLE market_data (ts timestamptz NOT NULL, symbol text NOT NULL, price numeric(18,6) NOT NULL,
                          volume bigint NOT NULL, PRIMARY KEY (symbol, ts));
INSERT INTO market_data
SELECT timestamptz '2026-11-25 00:00:00+00' + (i / 20) * interval '1 second', 'SYM' || lpad((i % 20)::text, 2, '0'),
       100 + sin(i / 1000.0) * 10, (i * 7919) % 10000
FROM generate_series(0, {rows} - 1) AS i;
CREATE TABLE orders (id bigserial PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now(), symbol text NOT NULL,
                     side text NOT NULL CHECK (side IN ('buy', 'sell')), qty integer NOT NULL, price numeric(18,6));
INSERT INTO orders (symbol, side, qty, price)
SELECT 'SYM' || lpad((i % 20)::text, 2, '0'), CASE WHEN i % 3 = 0 THEN 'sell' ELSE 'buy' END, 1 + i % 100, 100 + i % 7
FROM generate_series(1, 5000) AS i;
CREATE TABLE positions (symbol text PRIMARY KEY, qty bigint NOT NULL);
INSERT INTO positions SELECT symbol, sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) FROM orders GROUP BY symbol;
CREATE TABLE strategies (name text PRIMARY KEY, params jsonb NOT NULL, enabled boolean NOT NULL);
INSERT INTO strategies VALUES ('momentum', '{"window": 20}', true), ('mean_reversion', '{"z": 2.0}', false);
"""

CONFIG_FILES = {
    "app.yml": "api:\n  port: 8080\n  workers: 4\ndatabase:\n  host: timescaledb\n",
    "strategies/momentum.json": '{"window": 20, "symbols": ["SYM00", "SYM01"]}\n',
    "strategies/mean_reversion.json": '{"z": 2.0}\n',
    "risk/limits.yml": "max_position: 10000\nmax_order: 500\n",
}


def say(message):
    print("\n== %s" % message, flush=True)


def start_servers():
    """A fresh sandbox each run: any previous one is stopped and wiped."""
    stop_servers()
    shutil.rmtree(SANDBOX, ignore_errors=True)
    os.makedirs(SANDBOX, 0o700)
    os.chmod(SANDBOX, 0o755)  # the postgres user must reach its data directory below
    pg = sandbox.PgCluster(os.path.join(SANDBOX, "postgres"), secrets.token_urlsafe(16)).init().start()
    redis_server = sandbox.RedisServer(os.path.join(SANDBOX, "redis"), password=secrets.token_urlsafe(16),
                                       appendonly=True).start()
    return pg, redis_server


def stop_servers():
    if os.path.isdir(os.path.join(SANDBOX, "postgres", "data")):
        sandbox.PgCluster(os.path.join(SANDBOX, "postgres"), "").stop()
    sandbox.RedisServer(os.path.join(SANDBOX, "redis")).stop()


def seed(pg, redis_server, db_password):
    pg.sql("CREATE ROLE christmas LOGIN PASSWORD '%s'" % db_password)
    pg.sql("CREATE DATABASE christmas OWNER christmas")
    pg.sql(SEED_SQL.replace("{rows}", str(MARKET_ROWS)), dbname="christmas", user="christmas", password=db_password)
    sessions, cache = redis_server.client(0), redis_server.client(1)
    pipe = sessions.pipeline(transaction=False)
    for i in range(2000):
        pipe.hset("session:%d" % i, mapping={"user": "trader%d" % (i % 50), "since": "2026-11-25T08:00:00Z"})
        pipe.expire("session:%d" % i, 86400)
    pipe.execute()
    sessions.zadd("orderbook:SYM00:bids", {"100.5": 100.5, "100.4": 100.4, "100.2": 100.2})
    sessions.xadd("fills", {"order": "1", "qty": "10", "price": "100.5"})
    pipe = cache.pipeline(transaction=False)
    for i in range(5000):
        pipe.set("quote:SYM%02d:%d" % (i % 20, i), "%0.2f" % (100 + i % 13))
    pipe.execute()
    config = os.path.join(SANDBOX, "config")
    for name, text in CONFIG_FILES.items():
        os.makedirs(os.path.dirname(os.path.join(config, name)), exist_ok=True)
        with open(os.path.join(config, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    with open(os.path.join(config, ".env"), "w", encoding="utf-8") as handle:
        handle.write("CHRISTMAS_API_KEY=sandbox-only\n")
    os.chmod(os.path.join(config, ".env"), 0o600)
    os.symlink("strategies/momentum.json", os.path.join(config, "active_strategy.json"))
    return config


def observe(pg, redis_server, db_password, config):
    """What an operator would check, read from the servers and the disk."""
    state = {}
    exists = pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'christmas'")[0][0]
    for table in ("market_data", "orders", "positions", "strategies"):
        rows = pg.sql("SELECT count(*) FROM %s" % table, dbname="christmas", user="christmas",
                      password=db_password) if exists else [("no database",)]
        state["db: %s rows" % table] = rows[0][0]
    for db in (0, 1):
        state["redis: db%d keys" % db] = redis_server.client(db).dbsize()
    files = 0
    broken = 0
    for base, _dirs, names in os.walk(config):
        for name in names:
            files += 1
            path = os.path.join(base, name)
            if name in CONFIG_FILES or os.path.relpath(path, config) in CONFIG_FILES:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    broken += handle.read() != CONFIG_FILES[os.path.relpath(path, config)]
    state["config: files"] = files
    state["config: damaged files"] = broken
    return state


def playbook(name, *extra):
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", INVENTORY,
            os.path.join(ROOT, "playbooks", name), "-e", "@" + VARS_FILE, *extra]
    print("$ ansible-playbook -i inventories/local/hosts.yml playbooks/%s -e @.sandbox/vars.yml %s" % (
        name, " ".join(extra)), flush=True)
    started = time.monotonic()
    subprocess.run(argv, cwd=ROOT, check=True, env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg")))
    return time.monotonic() - started


def disaster(pg, redis_server, config):
    pg.sql("DROP DATABASE christmas WITH (FORCE)")
    redis_server.client(0).flushall()
    with open(os.path.join(config, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("api: {port: \x00broken")
    os.unlink(os.path.join(config, "risk", "limits.yml"))


def print_table(columns, timings):
    names = list(columns[0][1])
    width = max(len(n) for n in names) + 2
    header = "%-*s" % (width, "") + "".join("%18s" % title for title, _ in columns)
    print("\n" + header)
    print("-" * len(header))
    for name in names:
        print("%-*s" % (width, name) + "".join("%18s" % str(state.get(name, "-"))[:17] for _, state in columns))
    print("\n" + "   ".join("%s %.1f s" % item for item in timings.items()))


def main():
    say("Starting the sandbox (PostgreSQL 15, Redis with appendonly, config tree) under .sandbox/")
    pg, redis_server = start_servers()
    db_password = secrets.token_urlsafe(16)
    try:
        config = seed(pg, redis_server, db_password)
        fd = os.open(VARS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"christmas_db_port": pg.port, "christmas_db_password": db_password,
                       "christmas_db_admin_password": pg.password, "christmas_redis_port": redis_server.port,
                       "christmas_redis_password": redis_server.password}, handle)
        before = observe(pg, redis_server, db_password, config)

        say("Backing up database, Redis and config as one verified set")
        timings = {"backup": playbook("backup.yml")}

        say("Disaster: database dropped, Redis flushed, config corrupted and a file deleted")
        disaster(pg, redis_server, config)
        broken = observe(pg, redis_server, db_password, config)

        say("Dry run of the full restore (verification and preflight only)")
        timings["dry run"] = playbook("restore_full.yml", "-e", "manifest=latest", "--check")
        say("Full restore from the latest set")
        timings["restore"] = playbook("restore_full.yml", "-e", "manifest=latest")
        after = observe(pg, redis_server, db_password, config)

        print_table([("before", before), ("after disaster", broken), ("after restore", after)], timings)
        if after != before:
            print("\nRESTORE INCOMPLETE: the platform differs from before the disaster", file=sys.stderr)
            return 1
        print("\nThe platform is back exactly as it was. Backups, manifests and the config safety copy are in "
              ".sandbox/.")
        return 0
    finally:
        pg.stop()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
