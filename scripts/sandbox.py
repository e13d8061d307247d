# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throwaway PostgreSQL 15 clusters, Redis servers and an S3 server on 127.0.0.1, for the demo sandbox, the tests and
the benchmarks."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import boto3
import psycopg2
import redis
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


READY_BUCKET = "sandbox-ready"  # where start() proves the server stores and serves objects
WEED = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "weed")  # requirements-s3server.txt puts it there


def make_tls_files(directory, names=("localhost",)):
    """A throwaway CA and a server certificate for ``names`` signed by it, under ``directory``; (ca, cert, key)."""
    key_of = {}

    def write(name, data):
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path

    def certificate(subject, issuer, public, signer, extensions):
        now = datetime.datetime.now(datetime.UTC)
        builder = x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public) \
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5)) \
            .not_valid_after(now + datetime.timedelta(days=2))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    for role in ("ca", "server"):
        key_of[role] = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "christmas sandbox CA %s" % secrets.token_hex(4))])
    ca = certificate(ca_name, ca_name, key_of["ca"].public_key(), key_of["ca"],
                     [(x509.BasicConstraints(ca=True, path_length=0), True)])
    # pgBackRest matches a host only against DNS names: 127.0.0.1 is listed as one too.
    alternative = [x509.DNSName(name) for name in names] + [x509.DNSName("127.0.0.1"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), ca_name,
                         key_of["server"].public_key(), key_of["ca"],
                         [(x509.SubjectAlternativeName(alternative), False),
                          (x509.BasicConstraints(ca=False, path_length=None), True)])
    pem = serialization.Encoding.PEM
    return (write("ca.pem", ca.public_bytes(pem)), write("server.pem", server.public_bytes(pem)),
            write("server.key", key_of["server"].private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption())))


class S3Server:
    """A SeaweedFS server (master, volume, filer and S3 gateway in one process) under ``root``, its S3 API over TLS on
    ``localhost:port`` with one identity; nothing but 127.0.0.1 is listened on, and telemetry is off."""

    def __init__(self, root, access_key=None, secret_key=None, volume_mb=64, volumes=0):
        self.root, self.volume_mb, self.volumes = root, volume_mb, volumes  # volumes=0: as many as the disk holds
        self.access_key = access_key or "christmas" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.port = free_port()
        self.endpoint = "localhost:%d" % self.port
        self.process = None
        self.ca_file = None

    def start(self):
        """Start it (again: same ports, certificate and data); ready once it stores and serves an object."""
        if self.ca_file is None:
            os.makedirs(os.path.join(self.root, "data"), mode=0o700, exist_ok=True)
            self.ca_file, self._cert, self._key = make_tls_files(self.root)
            identities = {"identities": [{"name": "christmas", "credentials": [
                {"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            fd = os.open(os.path.join(self.root, "s3.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(identities, handle)
            self._ports = {name: free_port() for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
                "s3.port.grpc")}
        argv = [WEED, "-logtostderr", "-config_dir", self.root, "server", "-dir", os.path.join(self.root, "data"),
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                "-master.volumeSizeLimitMB=%d" % self.volume_mb, "-volume.max=%d" % self.volumes,
                "-volume.preStopSeconds=0", "-iam=false", "-metricsPort=0",
                "-s3", "-s3.port=%d" % self.port, "-s3.config", os.path.join(self.root, "s3.json"),
                "-s3.cert.file", self._cert, "-s3.key.file", self._key, "-s3.port.iceberg=0", "-s3.port.lance=0",
                ] + ["-%s=%d" % item for item in sorted(self._ports.items())]
        with open(os.path.join(self.root, "weed.log"), "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                            start_new_session=True)
        deadline = time.monotonic() + 60
        client = self.client()
        while True:
            try:
                if not any(b["Name"] == READY_BUCKET for b in client.list_buckets()["Buckets"]):
                    client.create_bucket(Bucket=READY_BUCKET)
                client.put_object(Bucket=READY_BUCKET, Key="ready", Body=b"ready")
                client.get_object(Bucket=READY_BUCKET, Key="ready")["Body"].read()
                return self
            except Exception as err:  # noqa: BLE001 - anything but an answer means not ready yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.destroy()
                    raise RuntimeError("the S3 server did not start; see %s" % os.path.join(self.root, "weed.log")) \
                        from err
                time.sleep(0.2)

    def client(self, **config):
        return boto3.session.Session().client(
            "s3", endpoint_url="https://" + self.endpoint, region_name="us-east-1", verify=self.ca_file,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=5, read_timeout=30, **config))

    def stop(self):
        """Down at once (SIGKILL: it lingers some 15 s after SIGTERM); its data stays for ``start``."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        ports = {str(port) for port in [self.port, *getattr(self, "_ports", {}).values()]}
        for name in os.listdir(tempfile.gettempdir()):  # its local sockets, named after its ports
            if name.startswith("seaweedfs-") and name.endswith(".sock") and name[:-5].rsplit("-", 1)[-1] in ports:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(tempfile.gettempdir(), name))

    def destroy(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
