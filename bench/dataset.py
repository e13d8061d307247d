"""Platform-like benchmark data at three sizes, generated once and reused while its parameters stay the same.

Layout below the data directory::

    secrets.json            passwords of the kept clusters (0600)
    template/               an initdb'ed cluster, copied to make fresh restore targets quickly
    SIZE/marker.json        the generation parameters and what was generated (sizes, counts, seconds)
    SIZE/pg/                the source cluster: database ``christmas`` owned by role ``christmas``
    SIZE/redis/dump.rdb     the source Redis keyspace, loaded by a server started on a copy of it
    SIZE/config/            the config tree

A size is regenerated when its marker is missing or records other parameters, or a part is missing; its Redis
data alone is made again before the keys with a TTL could expire.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass

from servers import PG_BIN, Cluster, Redis, remove_leftovers

GENERATOR_VERSION = 2
SYMBOLS = 100
REDIS_BATCH = 1000
REDIS_TTL_DAYS = (30, 90)
REDIS_STALE_DAYS = 25  # regenerate well before the shortest TTL could expire
MARKET_CHUNK = 2_000_000
CONFIG_FILES = 48


@dataclass(frozen=True)
class SizeSpec:
    name: str
    market_rows: int  # about 60 bytes of heap per row
    redis_keys: int
    config_bytes: int

    @property
    def orders(self):
        return max(5000, self.market_rows // 50)


SIZES = {
    "small": SizeSpec("small", 875_000, 10_000, 2 * 2**20),
    "medium": SizeSpec("medium", 8_750_000, 100_000, 4 * 2**20),
    "large": SizeSpec("large", 35_000_000, 1_000_000, 8 * 2**20),
}


@dataclass
class Dataset:
    """A generated size: where its parts live and what the marker says about them."""

    spec: SizeSpec
    root: str
    passwords: dict
    facts: dict

    @property
    def pg_root(self):
        return os.path.join(self.root, "pg")

    @property
    def rdb(self):
        return os.path.join(self.root, "redis", "dump.rdb")

    @property
    def config_dir(self):
        return os.path.join(self.root, "config")

    def cluster(self):
        return Cluster(self.pg_root, self.passwords["postgres"])


# ---------------------------------------------------------------- passwords, template, markers


def write_private_json(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def load_passwords(data_dir):
    """The passwords of the kept clusters; new ones (and so new clusters) when the file is missing."""
    path = os.path.join(data_dir, "secrets.json")
    found = read_json(path)
    if found:
        return found, False
    made = {"postgres": secrets.token_urlsafe(18), "christmas": secrets.token_urlsafe(18)}
    write_private_json(path, made)
    return made, True


def pg_version():
    out = subprocess.run([os.path.join(PG_BIN, "postgres"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def ensure_template(data_dir, passwords, renewed):
    """An initdb'ed cluster directory to copy for every fresh restore target."""
    root = os.path.join(data_dir, "template")
    wanted = {"pg": pg_version(), "version": GENERATOR_VERSION}
    if renewed or read_json(os.path.join(root, "marker.json")) != wanted:
        shutil.rmtree(root, ignore_errors=True)
        Cluster(root, passwords["postgres"]).init()
        write_private_json(os.path.join(root, "marker.json"), wanted)
    return os.path.join(root, "data")


def parameters(spec):
    return {"generator": GENERATOR_VERSION, "pg": pg_version(), "symbols": SYMBOLS, "config_files": CONFIG_FILES,
            **asdict(spec)}


def _is_current(marker, spec, dataset):
    """The marker records these parameters and every part it describes is still there."""
    return bool(marker) and marker.get("parameters") == parameters(spec) and all(os.path.exists(path) for path in (
        os.path.join(dataset.pg_root, "data", "PG_VERSION"), dataset.rdb, dataset.config_dir))


def _redis_is_fresh(marker):
    """Keys with a TTL stay well inside it; older Redis data is made again (the rest is kept)."""
    return time.time() - marker.get("redis_generated_at", 0) < REDIS_STALE_DAYS * 86400


def ensure_dataset(data_dir, spec, passwords, template, renewed, log=print):
    """Reuse the size's data when its marker matches, else generate it; returns the Dataset."""
    root = os.path.join(data_dir, spec.name)
    marker_path = os.path.join(root, "marker.json")
    marker = None if renewed else read_json(marker_path)
    dataset = Dataset(spec, root, passwords, {})
    if _is_current(marker, spec, dataset):
        dataset.facts = marker["facts"]
        if not _redis_is_fresh(marker):
            log("%s: making the Redis data again (its TTLs are running out)" % spec.name)
            dataset.facts.update(generate_redis(dataset, log))
            write_private_json(marker_path, dict(marker, facts=dataset.facts, redis_generated_at=time.time()))
        log("%s: reusing the data in %s (generated in %.0f s)" % (spec.name, root, dataset.facts["seconds"]))
        return dataset
    log("%s: generating %d market_data rows, %d Redis keys, %d MiB of config" % (
        spec.name, spec.market_rows, spec.redis_keys, spec.config_bytes // 2**20))
    remove_leftovers(root)
    os.makedirs(root, 0o755)
    os.chmod(root, 0o755)  # the postgres user reaches its data directory below
    started = time.monotonic()
    facts = generate_postgres(dataset, template, log)
    facts.update(generate_redis(dataset, log))
    facts.update(generate_config(dataset.config_dir, spec))
    facts["seconds"] = round(time.monotonic() - started, 1)
    write_private_json(marker_path, {"parameters": parameters(spec), "redis_generated_at": time.time(),
                                     "facts": facts})
    dataset.facts = facts
    log("%s: generated in %.0f s" % (spec.name, facts["seconds"]))
    return dataset


# ---------------------------------------------------------------- PostgreSQL

MARKET_SQL = """
INSERT INTO market_data
SELECT timestamptz '2026-01-01 00:00:00+00' + (i / {symbols}) * interval '1 second',
       'SYM' || lpad((i % {symbols})::text, 3, '0'),
       round((100 + (i % {symbols}) + sin(i / 997.0) * 5 + ((i * 7919) % 1000) / 10000.0)::numeric, 4),
       1 + (i * 7919) % 10000
FROM generate_series({first}::bigint, {last}::bigint) AS i
"""

TABLES_SQL = """
CREATE TABLE market_data (ts timestamptz NOT NULL, symbol text NOT NULL, price numeric(18,6) NOT NULL,
                          volume bigint NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now(), symbol text NOT NULL,
                     side text NOT NULL CHECK (side IN ('buy', 'sell')), qty integer NOT NULL, price numeric(18,6));
CREATE TABLE positions (symbol text PRIMARY KEY, qty bigint NOT NULL);
CREATE TABLE strategies (name text PRIMARY KEY, params jsonb NOT NULL, enabled boolean NOT NULL);
"""

SMALL_TABLES_SQL = """
INSERT INTO orders (ts, symbol, side, qty, price)
SELECT timestamptz '2026-01-01 00:00:00+00' + i * interval '3 seconds', 'SYM' || lpad((i % {symbols})::text, 3, '0'),
       CASE WHEN i % 3 = 0 THEN 'sell' ELSE 'buy' END, 1 + i % 100, 100 + i % 7
FROM generate_series(1, {orders}) AS i;
INSERT INTO positions SELECT symbol, sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) FROM orders GROUP BY symbol;
INSERT INTO strategies
SELECT 'strategy_' || i, jsonb_build_object('window', 5 + i, 'z', 1.5 + i / 10.0, 'symbols',
       (SELECT jsonb_agg('SYM' || lpad(s::text, 3, '0')) FROM generate_series(i, i + 4) AS s)), i % 4 <> 0
FROM generate_series(1, 40) AS i;
CREATE INDEX orders_symbol_ts ON orders (symbol, ts);
"""

FACTS_SQL = """
SELECT pg_database_size('christmas'), pg_relation_size('market_data'), pg_total_relation_size('market_data'),
       (SELECT count(*) FROM market_data), (SELECT count(*) FROM orders)
"""


def generate_postgres(dataset, template, log):
    """Source cluster from the template; the platform database filled server-side with generate_series."""
    spec, password = dataset.spec, dataset.passwords["christmas"]
    cluster = dataset.cluster().init(template=template).start()
    try:
        cluster.sql("CREATE ROLE christmas LOGIN PASSWORD '%s'" % password)
        cluster.sql("CREATE DATABASE christmas OWNER christmas")

        def owner_sql(statement):
            return cluster.sql(statement, dbname="christmas", user="christmas", password=password)

        owner_sql(TABLES_SQL)
        for first in range(0, spec.market_rows, MARKET_CHUNK):
            last = min(first + MARKET_CHUNK, spec.market_rows) - 1
            owner_sql(MARKET_SQL.format(symbols=SYMBOLS, first=first, last=last))
            log("%s: market_data %d/%d rows" % (spec.name, last + 1, spec.market_rows))
        owner_sql("ALTER TABLE market_data ADD PRIMARY KEY (symbol, ts)")
        owner_sql(SMALL_TABLES_SQL.format(symbols=SYMBOLS, orders=spec.orders))
        cluster.sql("VACUUM (FREEZE, ANALYZE)", dbname="christmas")  # no hint-bit writes during the first dump
        cluster.sql("CHECKPOINT")
        db_bytes, heap, total, rows, orders = cluster.sql(FACTS_SQL, dbname="christmas")[0]
    finally:
        cluster.stop()
    return {"db_bytes": db_bytes, "market_data_heap_bytes": heap, "market_data_total_bytes": total,
            "market_data_rows": rows, "orders_rows": orders}


# ---------------------------------------------------------------- Redis


def _redis_key(pipe, i, rng):
    """One key of a mix like the platform's: quotes, sessions with a TTL, orders, fills, order books, watch lists."""
    kind = i % 10
    sym = "SYM%03d" % (i % SYMBOLS)
    if kind < 4:
        pipe.set("quote:%s:%d" % (sym, i), "%.4f|%d|%d" % (100 + rng.random() * 50, rng.randrange(10**6), i))
    elif kind == 4:
        ttl = rng.randrange(REDIS_TTL_DAYS[0] * 86400, REDIS_TTL_DAYS[1] * 86400)
        pipe.set("session:%d" % i, "%048x" % rng.getrandbits(192), ex=ttl)
    elif kind in (5, 6):
        pipe.hset("order:%d" % i, mapping={"symbol": sym, "side": "buy" if i % 3 else "sell",
                                          "qty": rng.randrange(1, 500), "price": "%.2f" % (100 + rng.random() * 50),
                                          "status": "open", "trader": "trader%d" % (i % 97)})
    elif kind == 7:
        pipe.rpush("fills:%d" % i, *("%d:%.2f:%d" % (n, 100 + rng.random(), rng.randrange(100)) for n in range(12)))
    elif kind == 8:
        pipe.zadd("book:%s:%d" % (sym, i), {"%.2f" % (100 + n / 100): 100 + n / 100 for n in range(16)})
    else:
        pipe.sadd("watch:%d" % i, *("SYM%03d" % ((i + n) % SYMBOLS) for n in range(8)))


def _redis_db(i):
    """Quotes live in the cache database 1; sessions, orders, fills, books and watch lists in database 0."""
    return 1 if i % 10 < 4 else 0


def generate_redis(dataset, log):
    """Fill a server with pipelined writes in batches, SAVE, keep the RDB."""
    spec = dataset.spec
    remove_leftovers(os.path.dirname(dataset.rdb))  # an old RDB would be loaded at start
    server = Redis(os.path.dirname(dataset.rdb), secrets.token_urlsafe(12)).start()
    rng = random.Random(spec.redis_keys)
    try:
        clients = {db: server.client(db) for db in (0, 1)}
        for start in range(0, spec.redis_keys, REDIS_BATCH):
            pipes = {db: client.pipeline(transaction=False) for db, client in clients.items()}
            for i in range(start, min(start + REDIS_BATCH, spec.redis_keys)):
                _redis_key(pipes[_redis_db(i)], i, rng)
            for pipe in pipes.values():
                pipe.execute()
        keys = {str(db): client.dbsize() for db, client in clients.items()}
        clients[0].save()
        for client in clients.values():
            client.close()
    finally:
        server.stop()
    for name in os.listdir(server.root):
        if name != "dump.rdb":
            os.unlink(os.path.join(server.root, name))
    log("%s: Redis keys per database %s" % (spec.name, keys))
    return {"redis_keys_per_db": keys, "rdb_bytes": os.path.getsize(dataset.rdb)}


# ---------------------------------------------------------------- config tree


def _yaml_service(name, rng):
    lines = ["---", "service: %s" % name, "replicas: %d" % rng.randrange(1, 5), "resources:",
             "  cpu: %d" % rng.randrange(1, 8), "  memory_mb: %d" % (256 * rng.randrange(1, 16)), "env:"]
    lines += ["  SETTING_%02d: value-%d" % (n, rng.randrange(10**6)) for n in range(20)]
    lines += ["enabled: %s" % ("true" if rng.random() > 0.2 else "false")]
    return "\n".join(lines) + "\n"


def _config_files(spec, rng):
    """Relative path -> (bytes, mode): a few dozen files, most of the bytes in a few model parameter blobs."""
    files = {"app.yml": (b"---\napi:\n  port: 8080\n  workers: 4\ndatabase:\n  host: timescaledb\n", 0o644),
             ".env": (b"CHRISTMAS_API_KEY=benchmark-only\n", 0o600)}
    for n in range(12):
        files["services/service_%02d.yml" % n] = (_yaml_service("service_%02d" % n, rng).encode(), 0o644)
    for n in range(4):
        files["risk/limits_%d.yml" % n] = (b"---\nmax_position: %d\nmax_order: %d\n" % (
            rng.randrange(10**4, 10**5), rng.randrange(100, 1000)), 0o644)
    for n in range(3):
        files["certs/cert_%d.pem" % n] = (b"-----BEGIN CERTIFICATE-----\n" + rng.randbytes(1200).hex().encode()
                                          + b"\n-----END CERTIFICATE-----\n", 0o600)
    strategies = CONFIG_FILES - len(files) - 4
    for n in range(strategies):
        params = {"window": rng.randrange(5, 200), "z": round(rng.random() * 3, 3),
                  "symbols": ["SYM%03d" % rng.randrange(SYMBOLS) for _ in range(10)]}
        files["strategies/strategy_%02d.json" % n] = (json.dumps(params, indent=1).encode() + b"\n", 0o644)
    blob = max(0, spec.config_bytes - sum(len(data) for data, _mode in files.values())) // 4
    for n in range(4):
        files["models/model_%d.bin" % n] = (rng.randbytes(blob), 0o640)
    return files


def generate_config(root, spec):
    """The config tree: YAML, JSON, secrets 0600, binary model blobs, a symlink and an empty directory."""
    rng = random.Random(spec.config_bytes)
    files = _config_files(spec, rng)
    for name, (data, mode) in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)
    os.makedirs(os.path.join(root, "plugins"), exist_ok=True)
    os.symlink("strategies/strategy_00.json", os.path.join(root, "active_strategy.json"))
    return {"config_files": len(files), "config_bytes": sum(len(data) for data, _mode in files.values())}
