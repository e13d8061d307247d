#!/usr/bin/python3
"""Prints the platform's state as JSON, read from the servers themselves: per table its row count and a digest of
its rows, per Redis database every key's DUMP digest, per config file its SHA-256. The lab compares a replacement
host's state with the lost host's. Passwords come from PGPASSWORD and REDISCLI_AUTH."""

import hashlib
import json
import os
import socket
import sys

import psycopg2

TABLES = ("market_data", "orders", "positions")


def db_state():
    conn = psycopg2.connect(host="127.0.0.1", dbname="christmas", user="christmas")
    with conn, conn.cursor() as cur:
        state = {}
        for table in TABLES:
            cur.execute("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM %s t"
                        % table)
            state[table] = list(cur.fetchone())
    conn.close()
    return state


class Resp:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", 6379), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self.read()

    def read(self):
        line = self.file.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2]
        return [self.read() for _ in range(int(rest))]


def redis_state():
    client = Resp()
    client.call("AUTH", os.environ["REDISCLI_AUTH"])
    state = {}
    for db in range(16):
        client.call("SELECT", db)
        keys = client.call("KEYS", "*")
        if keys:
            state[str(db)] = {key.decode(): hashlib.sha256(client.call("DUMP", key)).hexdigest() for key in keys}
    return state


def config_state(root):
    state = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                state[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return state


if __name__ == "__main__":
    json.dump({"db": db_state(), "redis": redis_state(), "config": config_state(sys.argv[1])}, sys.stdout,
              sort_keys=True)
