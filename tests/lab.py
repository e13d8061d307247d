"""The sample platform of lab/platform as a compose project under podman: brought up per test module in a private
directory with its own ports, secrets, config tree and volumes, and removed completely afterwards."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import psycopg2
import redis
from sandbox import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "lab")
CONTAINERS_CONF = os.path.join(LAB, "containers.conf")
COMPOSE_COMMAND = "podman-compose"
SERVICES = ("timescaledb", "redis", "api")

SAMPLE_DATA = os.path.join(LAB, "platform", "db", "sample_data.sql")


def lab_env():
    """The environment every podman command of the lab runs with (runc and lower ulimits, see lab/containers.conf)."""
    return dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)


def build_image():
    """The lab image's name; built from Debian packages on first use (about 70 s), cached by lab/image.sh."""
    done = subprocess.run(["bash", os.path.join(LAB, "image.sh")], capture_output=True, text=True, env=lab_env(),
                          check=False)
    if done.returncode:
        raise RuntimeError("lab/image.sh failed: %s" % done.stderr.strip()[-2000:])
    return done.stdout.strip().splitlines()[-1]


def assert_compose_started(done, states):
    """Every service's container runs after ``podman-compose up`` (``done``; ``states``: podman's state of each
    service's container), else one line with the end of podman-compose's own output: 1.0.3 exits 0 even when podman
    made no container (e.g. without the init binary that ``init: true`` needs)."""
    not_running = ", ".join("%s (%s)" % item for item in sorted(states.items()) if item[1] != "running")
    if not_running:
        said = " | ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-3:])
        raise RuntimeError("podman-compose up did not start %s: %s" % (not_running, said))


def _write_secret(path, value):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


class LabPlatform:
    """One compose project: timescaledb (PostgreSQL 15), redis and api, with data in named volumes."""

    def __init__(self, image, appendonly=True):
        self.root = tempfile.mkdtemp(prefix="christmas-lab-")  # 0700: the secrets below it stay private
        self.name = "christmas%s" % secrets.token_hex(4)  # the compose project name comes from the directory
        self.compose_dir = os.path.join(self.root, self.name)
        self.config_dir = os.path.join(self.root, "config")
        self.backup_dir = os.path.join(self.root, "backups")
        os.mkdir(self.backup_dir, 0o700)  # mounted into the database's container
        shutil.copytree(os.path.join(LAB, "platform"), self.compose_dir, ignore=shutil.ignore_patterns("config"))
        shutil.copytree(os.path.join(LAB, "platform", "config"), self.config_dir)
        secrets_dir = os.path.join(self.compose_dir, "secrets")
        os.mkdir(secrets_dir, 0o700)
        self.admin_password, self.db_password, self.redis_password = (secrets.token_urlsafe(16) for _ in range(3))
        for name, value in (("db_admin_password", self.admin_password), ("db_password", self.db_password),
                            ("redis_password", self.redis_password)):
            _write_secret(os.path.join(secrets_dir, name), value)
        self.db_port, self.port, self.api_port = free_port(), free_port(), free_port()
        self.password = self.redis_password  # what conftest's seed_redis and redis_state read from a server
        settings = {"CHRISTMAS_LAB_IMAGE": image, "CHRISTMAS_DB_PORT": self.db_port, "CHRISTMAS_REDIS_PORT": self.port,
                    "CHRISTMAS_API_PORT": self.api_port, "CHRISTMAS_REDIS_APPENDONLY": "yes" if appendonly else "no",
                    "CHRISTMAS_CONFIG_DIR": self.config_dir, "CHRISTMAS_BACKUP_DIR": self.backup_dir}
        with open(os.path.join(self.compose_dir, ".env"), "w", encoding="utf-8") as handle:
            handle.writelines("%s=%s\n" % item for item in settings.items())

    @property
    def health_url(self):
        return "http://127.0.0.1:%d/health" % self.api_port

    def compose(self, *args, check=True):
        done = subprocess.run([COMPOSE_COMMAND, *args], cwd=self.compose_dir, env=lab_env(), capture_output=True,
                              text=True, check=False)
        if check and done.returncode:
            raise RuntimeError("%s %s: %s" % (COMPOSE_COMMAND, " ".join(args), done.stderr.strip()[-2000:]))
        return done

    def podman(self, *args, check=True):
        return subprocess.run(["podman", *args], env=lab_env(), capture_output=True, text=True, check=check)

    def container(self, service):
        return "%s_%s_1" % (self.name, service)

    def state(self, service):
        """The container's state as podman reports it (running, exited, ...), or missing."""
        done = self.podman("inspect", "--format", "{{.State.Status}}", self.container(service), check=False)
        return done.stdout.strip() if done.returncode == 0 else "missing"

    def started_at(self, service):
        return self.podman("inspect", "--format", "{{.State.StartedAt}}", self.container(service)).stdout.strip()

    def up(self, timeout=90):
        done = self.compose("up", "-d")
        assert_compose_started(done, {service: self.state(service) for service in SERVICES})
        self.wait_healthy(timeout)
        return self

    def health(self):
        """(status code, body) of the api's health endpoint; (None, error) when it does not answer."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except (OSError, ValueError) as err:
            return None, str(err)

    def wait_healthy(self, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            code, body = self.health()
            if code == 200:
                return body
            if time.monotonic() > deadline:
                raise RuntimeError("the lab platform is not healthy after %d s: %s %s" % (timeout, code, body))
            time.sleep(0.5)

    def connect(self, user="christmas"):
        password = self.db_password if user == "christmas" else self.admin_password
        dbname = "christmas" if user == "christmas" else "postgres"
        conn = psycopg2.connect(host="127.0.0.1", port=self.db_port, dbname=dbname, user=user, password=password,
                                connect_timeout=5)
        conn.autocommit = True
        return conn

    def sql(self, statement, user="christmas"):
        conn = self.connect(user)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def client(self, db=0):
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.redis_password, db=db)

    def seed_db(self):
        with open(SAMPLE_DATA, encoding="utf-8") as handle:
            self.sql(handle.read())

    def table_digests(self):
        """Every platform table's content digest and row count, read from the server."""
        names = [name for (name,) in self.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {name: self.sql("SELECT md5(string_agg(t::text, '|' ORDER BY t::text)), count(*) FROM %s t"
                               % name)[0] for name in names}

    def host_vars(self, **extra):
        """The role's variables for this platform (local connection on the compose host)."""
        values = {
            "christmas_backup_dir": self.backup_dir,
            "christmas_config_dir": self.config_dir,
            "christmas_db_host": "127.0.0.1",
            "christmas_db_port": self.db_port,
            "christmas_db_password": self.db_password,
            "christmas_db_admin_user": "postgres",
            "christmas_db_admin_password": self.admin_password,
            "christmas_redis_host": "127.0.0.1",
            "christmas_redis_port": self.port,
            "christmas_redis_password": self.redis_password,
            "christmas_service_manager": "compose",
            "christmas_compose_dir": self.compose_dir,
            "christmas_compose_command": COMPOSE_COMMAND,
            "christmas_health_urls": [self.health_url],
            "christmas_incident_db": os.path.join(self.root, "incidents", "incidents.sqlite"),
        }
        values.update(extra)
        return values

    def destroy(self):
        """Containers, volumes, network and files of this project, whatever state they are in."""
        label = "label=com.docker.compose.project=%s" % self.name
        ids = self.podman("ps", "-a", "-q", "--filter", label, check=False).stdout.split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids, check=False)
        volumes = self.podman("volume", "ls", "-q", "--filter", label, check=False).stdout.split()
        if volumes:
            self.podman("volume", "rm", "-f", *volumes, check=False)
        self.podman("network", "rm", "-f", "%s_default" % self.name, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def build_scheduler_image():
    """The scheduling host's image (the lab image with systemd, cron and logrotate), built on first use by
    lab/scheduler_image.sh from a local repository of Debian packages, then cached."""
    done = subprocess.run(["bash", os.path.join(LAB, "scheduler_image.sh")], capture_output=True, text=True,
                          env=lab_env(), check=False)
    if done.returncode:
        raise RuntimeError("lab/scheduler_image.sh failed: %s" % done.stderr.strip()[-2000:])
    return done.stdout.strip().splitlines()[-1]
