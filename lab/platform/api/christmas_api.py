"""The lab's application service: reads the config directory, talks to the database and Redis, and answers
GET /health with 200 only when all three work (503 and what is broken otherwise)."""

import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

CONFIG_DIR = os.environ.get("CHRISTMAS_CONFIG_DIR", "/etc/christmas")
SECRETS = "/run/christmas"


def secret(name):
    with open(os.path.join(SECRETS, name)) as handle:
        return handle.read().strip()


def check_config():
    with open(os.path.join(CONFIG_DIR, "settings.json")) as handle:
        settings = json.load(handle)
    for name in settings["strategies"]:
        with open(os.path.join(CONFIG_DIR, "strategies", name + ".json")) as handle:
            json.load(handle)
    return settings


def check_db(settings):
    db = settings["database"]
    conn = psycopg2.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                            password=secret("db_password"), connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), max(ts)::text FROM market_data")
            rows, newest = cur.fetchone()
    finally:
        conn.close()
    return {"market_data_rows": rows, "newest": newest}


def redis_command(sock, *words):
    sock.sendall(b"".join([b"*%d\r\n" % len(words)] + [b"$%d\r\n%s\r\n" % (len(w), w) for w in words]))
    reply = sock.makefile("rb").readline().rstrip(b"\r\n")
    if reply.startswith(b"-"):
        raise RuntimeError(reply[1:].decode())
    return reply


def check_redis(settings):
    redis = settings["redis"]
    with socket.create_connection((redis["host"], redis["port"]), timeout=3) as sock:
        redis_command(sock, b"AUTH", secret("redis_password").encode())
        return {"redis_keys": int(redis_command(sock, b"DBSIZE")[1:])}


def health():
    report, broken = {}, []
    try:
        settings = check_config()
    except Exception as err:  # noqa: BLE001 - the health endpoint reports every failure instead of raising it
        return 503, {"status": "broken", "broken": ["config: %s" % err]}
    for name, check in (("database", check_db), ("redis", check_redis)):
        try:
            report.update(check(settings))
        except Exception as err:  # noqa: BLE001 - idem
            broken.append("%s: %s" % (name, str(err).strip().splitlines()[0] if str(err).strip() else err))
    report["status"] = "broken" if broken else "ok"
    if broken:
        report["broken"] = broken
    return (503 if broken else 200), report


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health":
            self.send_error(404)
            return
        code, body = health()
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    # As PID 1 in its container the process gets no default SIGTERM handling; stop promptly on compose stop/down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
