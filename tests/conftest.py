"""Fixtures: real PostgreSQL 15 clusters, Redis servers and config trees in temp dirs, and ansible-playbook runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from sandbox import PG_BIN, PgCluster, RedisServer  # noqa: E402
from timescaledb_standin import HYPERTABLE_SQL, StandinLauncher  # noqa: E402

from ansible_collections.christmas.recovery.plugins.module_utils.sets import manifest, signing  # noqa: E402
from lab import LabPlatform, build_image  # noqa: E402

pytest_plugins = ["vault_host", "s3_server"]  # the vault (an sshd container) and the S3 server

STANDIN_DIR = os.path.join(ROOT, "tests", "fixtures", "timescaledb_standin")
PROMTOOL = os.path.join(ROOT, ".venv", "bin", "promtool")


@pytest.fixture(scope="session")
def workdir():
    """A per-worker scratch root that postgres can traverse; removed at the end whatever happened."""
    path = tempfile.mkdtemp(prefix="christmas-tests-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# This machine's own places the collection writes by default: a test that writes one ran without the test's
# values (a child started without the tests' key, an inventory built by hand without isolated_vars).
MACHINE_PLACES = (os.path.dirname(signing.DEFAULT_KEY_FILE), "/var/lib/christmas", "/var/lib/prometheus/node-exporter")


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(workdir):
    """The tests' signing key (made by the first backup), never /etc/christmas-recovery's: modules and scripts find
    it in the environment, playbooks in christmas_signing_key_file. A run that wrote into one of the machine's own
    places fails, and what it made there is removed."""
    path = os.path.join(workdir, "signing", "signing.key")
    before = {place for place in MACHINE_PLACES if os.path.exists(place)}
    os.environ["CHRISTMAS_SIGNING_KEY_FILE"] = path
    yield path
    os.environ.pop("CHRISTMAS_SIGNING_KEY_FILE", None)
    made = [place for place in MACHINE_PLACES if place not in before and os.path.exists(place)]
    for place in made:
        shutil.rmtree(place, ignore_errors=True)
    if made:
        pytest.fail("tests wrote into this machine's own %s instead of the tests' directories" % ", ".join(made))


@pytest.fixture(scope="session")
def pg_template(workdir):
    cluster = PgCluster(os.path.join(workdir, "template"), secrets.token_urlsafe(12)).init()
    return cluster


@pytest.fixture
def make_cluster(workdir, pg_template):
    """Factory of started clusters (copies of one initdb); all are stopped and removed after the test."""
    made = []

    def make(*settings):
        cluster = PgCluster(tempfile.mkdtemp(prefix="pg-", dir=workdir), pg_template.password)
        made.append(cluster)
        return cluster.init(template=pg_template.data).start(*settings)

    yield make
    for cluster in made:
        cluster.destroy()


@pytest.fixture
def make_redis(workdir):
    made = []

    def make(password=None, appendonly=False):
        server = RedisServer(tempfile.mkdtemp(prefix="redis-", dir=workdir), password=password, appendonly=appendonly)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.destroy()


@pytest.fixture(scope="module")
def module_dir(workdir):
    """One directory per test module: what its tests share, and every example of a hypothesis test (function-scoped
    fixtures would be shared by all of them anyway)."""
    path = tempfile.mkdtemp(prefix="module-", dir=workdir)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_dir(workdir):
    path = tempfile.mkdtemp(prefix="case-", dir=workdir)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- sample platform data

PLATFORM_SQL = """
CREATE TABLE market_data (ts timestamptz NOT NULL, symbol text NOT NULL, price numeric(18,6), volume bigint,
                          PRIMARY KEY (symbol, ts));
INSERT INTO market_data SELECT timestamptz '2026-11-01 00:00:00+00' + i * interval '1 second', 'SYM' || (i % 17),
       100 + (i % 1000) / 10.0, i % 5000 FROM generate_series(1, 5000) AS i;
CREATE TABLE orders (id bigserial PRIMARY KEY, symbol text, side text CHECK (side IN ('buy', 'sell')), qty int,
                     note text);
INSERT INTO orders (symbol, side, qty, note) SELECT 'SYM' || (i % 17), CASE WHEN i % 2 = 0 THEN 'buy' ELSE 'sell' END,
       i, 'ordre n° ' || i FROM generate_series(1, 700) AS i;
CREATE TABLE positions (symbol text PRIMARY KEY, qty bigint);
INSERT INTO positions SELECT 'SYM' || i, i * 10 FROM generate_series(0, 16) AS i;
CREATE VIEW latest_prices AS SELECT DISTINCT ON (symbol) symbol, price FROM market_data ORDER BY symbol, ts DESC;
GRANT SELECT ON market_data, latest_prices TO christmas_readers;
"""


class Platform:
    """A seeded platform database: owner ``christmas``, a ``christmas_readers`` group and an ``analyst`` member."""

    def __init__(self, cluster, password, analyst_password):
        self.cluster, self.password, self.analyst_password = cluster, password, analyst_password

    def sql(self, statement, user="christmas"):
        password = {"christmas": self.password, "analyst": self.analyst_password}.get(user)
        return self.cluster.sql(statement, dbname="christmas", user=user, password=password)

    def snapshot(self):
        """Everything a restore must bring back, read from the server."""
        tables = {}
        for (name,) in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"):
            tables[name] = self.sql(
                "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)), count(*) FROM %s t" % name)[0]
        return tables


def seed_platform(cluster, tablespace_dir=None):
    password, analyst_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    cluster.sql("CREATE ROLE christmas LOGIN PASSWORD '%s'" % password)
    cluster.sql("CREATE ROLE christmas_readers NOLOGIN")
    cluster.sql("CREATE ROLE analyst LOGIN PASSWORD '%s' IN ROLE christmas_readers" % analyst_password)
    cluster.sql("CREATE DATABASE christmas OWNER christmas")
    cluster.sql("REVOKE ALL ON DATABASE christmas FROM PUBLIC")
    cluster.sql("GRANT CONNECT ON DATABASE christmas TO christmas_readers")
    cluster.sql("ALTER DATABASE christmas SET work_mem = '8MB'")
    platform = Platform(cluster, password, analyst_password)
    platform.sql(PLATFORM_SQL)
    return platform


def seed_hypertable_platform(cluster, scheduled=True):
    """The seeded platform with market_data as a stand-in hypertable (HYPERTABLE_SQL), on a cluster that preloads
    the stand-in; ``scheduled=False`` unschedules its jobs, for a cluster without a stand-in launcher."""
    platform = seed_platform(cluster)
    cluster.sql(HYPERTABLE_SQL + ("" if scheduled else "UPDATE _timescaledb_config.bgw_job SET scheduled = false"),
                dbname="christmas")
    return platform


def settings_into_conf(cluster, conf_dir=None):
    """What the sandbox passes on pg_ctl's command line, written into postgresql.conf (in ``conf_dir``, by default
    the data directory), so that pg_ctl start without options brings the same server back."""
    with open(os.path.join(conf_dir or cluster.data, "postgresql.conf"), "a", encoding="utf-8") as handle:
        handle.write("port = %d\nunix_socket_directories = '%s'\nlisten_addresses = '127.0.0.1'\nfsync = off\n"
                     % (cluster.port, cluster.run_dir))


@pytest.fixture
def platform(make_cluster):
    return seed_platform(make_cluster())


def seed_redis(server):
    """Every type, TTLs, binary keys and values, several logical databases."""
    main = server.client(0)
    main.set("session:42", "alice", ex=3600)
    main.set(b"bin:\x00\xff\xfe", bytes(range(256)))
    main.hset("user:1", mapping={"name": "Ålice", "limit": "1000"})
    main.rpush("queue:orders", *[b"o%d" % i for i in range(50)])
    main.sadd("symbols", *["SYM%d" % i for i in range(17)])
    main.zadd("leaderboard", {"a": 1.5, "b": -2, "c": 1e10})
    main.xadd("ticks", {"symbol": "SYM1", "price": "101.5"})
    main.xadd("ticks", {"symbol": "SYM2", "price": "99.5"})
    main.set("big", "x" * 200000)
    cache = server.client(3)
    for i in range(300):
        cache.set("cache:%d" % i, "v%d" % i, px=600000 if i % 2 else None)
    return redis_state(server)


def _redis_value(client, key, kind):
    if kind == b"string":
        return client.get(key)
    if kind == b"hash":
        return sorted(client.hgetall(key).items())
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return sorted(client.smembers(key))
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        return client.xrange(key)
    raise AssertionError("unexpected Redis type %r" % kind)


def redis_state(server):
    """Per database, every key with its type, value read by type, and whether it has a TTL."""
    state = {}
    for db in range(16):
        client = server.client(db)
        keys = sorted(client.scan_iter(count=1000))
        if keys:
            state[db] = {}
            for key in keys:
                kind = client.type(key)
                state[db][key] = (kind, _redis_value(client, key, kind), client.pttl(key) > 0)
    return state


@pytest.fixture
def config_dir(tmp_dir):
    """A config tree with modes, a relative symlink, an empty directory and non-ASCII names."""
    root = os.path.join(tmp_dir, "config")
    os.makedirs(os.path.join(root, "strategies", "empty"))
    with open(os.path.join(root, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("api:\n  port: 8080\n")
    with open(os.path.join(root, "secrets.env"), "w", encoding="utf-8") as handle:
        handle.write("API_KEY=not-a-real-key\n")
    os.chmod(os.path.join(root, "secrets.env"), 0o600)
    with open(os.path.join(root, "strategies", "momentum_é_日本.json"), "w", encoding="utf-8") as handle:
        handle.write('{"window": 20}\n')
    with open(os.path.join(root, "run.sh"), "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n")
    os.chmod(os.path.join(root, "run.sh"), 0o750)
    os.symlink("app.yml", os.path.join(root, "current.yml"))
    os.symlink("../app.yml", os.path.join(root, "strategies", "app-link.yml"))
    return root


def tree_state(root):
    """Every entry below root: type, mode, content or link target."""
    state = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                state[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[rel] = ("dir", oct(info.st_mode & 0o7777))
            else:
                with open(path, "rb") as handle:
                    state[rel] = ("file", oct(info.st_mode & 0o7777), handle.read())
    return state


# ---------------------------------------------------------------- timescaledb stand-in


def file_contents(root):
    """{path relative to root: bytes} of every file under ``root``."""
    found = {}
    for top, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(top, name), "rb") as handle:
                found[os.path.relpath(os.path.join(top, name), root)] = handle.read()
    return found


def set_files(root, set_id):
    """``file_contents`` of one set of a backup directory: its manifest and set directory."""
    return {name: data for name, data in file_contents(root).items()
            if name.startswith((manifest.manifest_name(set_id), manifest.set_dir_name(set_id)))}


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="session")
def timescaledb_standin():
    """Install the SQL-only STAND-IN named timescaledb into PostgreSQL 15's extension dir for this session, and as
    its library (what shared_preload_libraries loads) a copy of PostgreSQL's own auto_explain module."""
    def pg_config(option):
        return subprocess.run([os.path.join(PG_BIN, "pg_config"), option], capture_output=True, text=True,
                              check=True).stdout.strip()

    target = os.path.join(pg_config("--sharedir"), "extension")
    control = os.path.join(target, "timescaledb.control")
    if os.path.exists(control) and "stand-in" not in _read(control):
        pytest.skip("a real TimescaleDB is installed; the stand-in would replace it")
    installed = []
    for name in os.listdir(STANDIN_DIR):
        shutil.copy(os.path.join(STANDIN_DIR, name), os.path.join(target, name))
        installed.append(os.path.join(target, name))
    library = os.path.join(pg_config("--pkglibdir"), "timescaledb.so")
    shutil.copy(os.path.join(pg_config("--pkglibdir"), "auto_explain.so"), library)
    installed.append(library)
    yield
    for path in installed:
        os.unlink(path)


@pytest.fixture
def timescaledb_cluster(timescaledb_standin, make_cluster, workdir):
    """Factory of clusters that preload the stand-in, each with its stand-in launcher (``cluster.launcher``)."""
    launchers = []

    def make():
        message_dir = tempfile.mkdtemp(prefix="tsdb-launcher-", dir=workdir)
        shutil.chown(message_dir, "postgres")
        cluster = make_cluster("shared_preload_libraries=timescaledb",
                               "timescaledb_standin.launcher_dir=" + message_dir)
        cluster.launcher = StandinLauncher(cluster, message_dir)
        cluster.launcher.start()
        launchers.append(cluster.launcher)
        return cluster

    yield make
    for launcher in launchers:
        launcher.stop()


# ---------------------------------------------------------------- the runbook's backup command and live state

BACKUP_SCRIPT = os.path.join(ROOT, "scripts", "backup.py")


def script_environ(**extra):
    """This process's environment for a script, without any CHRISTMAS_ setting but the tests' signing key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRISTMAS_") or k == "CHRISTMAS_SIGNING_KEY_FILE"}
    return dict(env, **extra)


def backup_command(backup_dir, platform=None, redis_server=None, config=None, extra=(), tmpdir=None):
    """argv and environment of scripts/backup.py; passwords only in the environment, as the runbook says."""
    argv = [sys.executable, BACKUP_SCRIPT, "--backup-dir", backup_dir, *extra]
    env = script_environ()
    if tmpdir:
        env["TMPDIR"] = tmpdir
    if platform:
        argv += ["--db-host", "127.0.0.1", "--db-port", str(platform.cluster.port), "--db-admin-user", "postgres"]
        env.update(CHRISTMAS_DB_PASSWORD=platform.password, CHRISTMAS_DB_ADMIN_PASSWORD=platform.cluster.password)
    else:
        argv.append("--skip-db")
    if redis_server:
        argv += ["--redis-host", "127.0.0.1", "--redis-port", str(redis_server.port)]
        if redis_server.password:
            env["CHRISTMAS_REDIS_PASSWORD"] = redis_server.password
    else:
        argv.append("--skip-redis")
    argv += ["--config-dir", config] if config else ["--skip-config"]
    return argv, env


def group_members(pgid):
    """Live (non-zombie) processes of a process group."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid, encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(pid))
    return members


def kill_group(pgid):
    """SIGKILL what is left of a process group (pg_dump workers outlive their killed parent) until it is gone."""
    deadline = time.monotonic() + 10
    while group_members(pgid):
        assert time.monotonic() < deadline, "process group %d survives SIGKILL" % pgid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.01)


def append_members(path, members):
    """Rewrite the tar at ``path`` as itself plus ``members`` ((TarInfo, data) pairs): an attacker's archive."""
    buffer = io.BytesIO()
    with tarfile.open(path) as source, tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for member in source:
            out.addfile(member, source.extractfile(member) if member.isreg() else None)
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def live_state(env):
    """What a restore could change: rows, the list of databases, Redis keys, the config tree and what lies beside it."""
    parent = os.path.dirname(env.config)
    return {
        "db": env.platform.snapshot(),
        "databases": env.platform.cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1"),
        "redis": redis_state(env.redis),
        "config": tree_state(env.config),
        "beside_config": sorted(name for name in os.listdir(parent) if "config" in name),
    }


# ---------------------------------------------------------------- ansible-playbook


WARNING_PREFIX = r"\[(?:DEPRECATION )?WARNING\]: "


def ansible_warnings(output):
    """Every [WARNING] and [DEPRECATION WARNING] of an ansible-playbook run, each with the lines that follow it up to
    a blank line or the next warning (a template error's details and origin)."""
    return re.findall(r"^%s.*(?:\n(?!%s).+)*" % (WARNING_PREFIX, WARNING_PREFIX), output, re.MULTILINE)


def assert_no_warnings(output, allow_warnings=()):
    """ansible-playbook only warns of a template error (an undefined variable in a task's name) or a deprecation:
    a test fails on every warning but those it expects, each named by a piece of its text in ``allow_warnings``."""
    unexpected = [text for text in ansible_warnings(output) if not any(piece in text for piece in allow_warnings)]
    assert not unexpected, "ansible-playbook warned:\n" + "\n".join(unexpected)


class PlaybookRun:
    def __init__(self, proc):
        self.rc, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        match = re.findall(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", self.stdout)
        self.ok, self.changed, self.unreachable, self.failed = (int(x) for x in match[-1]) if match else (0, 0, 0, 1)

    @property
    def output(self):
        return self.stdout + self.stderr

    @property
    def changed_tasks(self):
        """Titles of the tasks that reported a change."""
        titles, task = [], None
        for line in self.stdout.splitlines():
            if line.startswith("TASK ["):
                task = line[len("TASK ["):line.rindex("]")]
            elif line.startswith("changed: [") and task not in titles:
                titles.append(task)
        return titles

    def failure_message(self):
        """The failed task's message, as the operator reads it: one line, never a traceback. A restore play repeats
        it once more when it fails after recording the failure."""
        assert self.rc != 0 and "Traceback" not in self.output, self.output[-3000:]
        fatal = [line for line in self.stdout.splitlines() if line.startswith("fatal: [platform]: FAILED! => ")]
        messages = {json.loads(line.split(" => ", 1)[1])["msg"] for line in fatal}
        assert len(messages) == 1 and len(fatal) <= 2, self.output[-3000:]
        message = messages.pop()
        assert "\n" not in message
        return message


def connection_vars(platform=None, redis_server=None, config=None, backup_dir=None, admin=True):
    variables = {}
    if platform:
        variables.update(christmas_db_host="127.0.0.1", christmas_db_port=platform.cluster.port,
                         christmas_db_password=platform.password)
        if admin:
            variables.update(christmas_db_admin_user="postgres",
                             christmas_db_admin_password=platform.cluster.password)
    if redis_server:
        variables.update(christmas_redis_host="127.0.0.1", christmas_redis_port=redis_server.port,
                         christmas_redis_password=redis_server.password)
    if config:
        variables["christmas_config_dir"] = config
    if backup_dir:
        variables["christmas_backup_dir"] = backup_dir
    return variables


def isolated_vars(tmp_dir):
    """What a test's inventory sets so that nothing lands in this machine's own places: recovery records in the
    test's directory (not /var/lib/christmas), metrics too (not node_exporter's directory), and the session's
    signing key (not /etc/christmas-recovery)."""
    return {"christmas_incident_db": os.path.join(tmp_dir, "incidents", "incidents.sqlite"),
            "christmas_metrics_dir": os.path.join(tmp_dir, "metrics"),
            "christmas_signing_key_file": os.environ["CHRISTMAS_SIGNING_KEY_FILE"]}


@pytest.fixture
def run_playbook(tmp_dir):
    """Run playbooks/NAME.yml against a one-host inventory (local connection) holding ``host_vars``, with ``groups``
    added to it; any warning but those in ``allow_warnings`` fails the test (assert_no_warnings)."""

    def run(name, host_vars, extra_vars=None, check=False, verbosity=0, expect_ok=True, env=None, allow_warnings=(),
            groups=None):
        inventory = os.path.join(tmp_dir, "inventory.json")
        host = dict(isolated_vars(tmp_dir), **host_vars)
        host.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
        with open(inventory, "w", encoding="utf-8") as handle:  # groups: more groups, {name: {"hosts": {...}}}
            json.dump(dict(groups or {}, christmas={"hosts": {"platform": host}}), handle)
        argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
                os.path.join(ROOT, "playbooks", name + ".yml")]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        if check:
            argv.append("--check")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False,
                              env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                                       ANSIBLE_NOCOLOR="1", **(env or {})))
        result = PlaybookRun(proc)
        if expect_ok is not None:
            assert (result.rc == 0) == expect_ok, result.output[-4000:]
        assert_no_warnings(result.output, allow_warnings)
        return result

    return run


class ArgvSampler(threading.Thread):
    """Reads the argv and the environment of every process on the machine every few milliseconds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen, self.environ, self.rounds = set(), set(), 0
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for name, into in (("cmdline", self.seen), ("environ", self.environ)):
                    try:
                        with open("/proc/%s/%s" % (pid, name), "rb") as handle:
                            into.add(handle.read())
                    except OSError:
                        pass
            self.rounds += 1
            self._done.wait(0.002)

    def stop(self):
        self._done.set()
        self.join()


def read_metrics(metrics_dir):
    """{file name: {(metric name, frozenset(labels)): value}}, every file checked by promtool and parsed by
    prometheus_client; and no temporary file is left beside them."""
    files = {}
    for name in sorted(os.listdir(metrics_dir)):
        path = os.path.join(metrics_dir, name)
        assert name.endswith(".prom"), "left in the textfile directory: %s" % name
        assert os.stat(path).st_mode & 0o777 == 0o644
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        files[name] = {(sample.name, frozenset(sample.labels.items())): sample.value
                       for family in text_string_to_metric_families(text) for sample in family.samples}
    return files


def value(samples, name, **labels):
    return samples[("christmas_recovery_" + name, frozenset(labels.items()))]


def run_module(tmp_dir, name, args, check=False, env=None, allow_warnings=()):
    """One module in a one-task playbook (local connection), with ``env`` (default: ours) for ansible-playbook;
    (what it registered, also when it failed; the play's output)."""
    token = secrets.token_hex(4)
    result_path = os.path.join(tmp_dir, "result-%s.json" % token)
    playbook_path = os.path.join(tmp_dir, "play-%s.json" % token)
    playbook = [{"name": "One module", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Run " + name, "christmas.recovery." + name: args, "register": "result", "ignore_errors": True},
        {"name": "Keep the result", "check_mode": False,
         "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": result_path, "mode": "0600"}},
    ]}]
    with open(playbook_path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=" + sys.executable, playbook_path] + (["--check"] if check else [])
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False,
                          env=dict(os.environ if env is None else env, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                                   ANSIBLE_NOCOLOR="1", no_proxy="127.0.0.1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_warnings(proc.stdout + proc.stderr, allow_warnings)
    with open(result_path, encoding="utf-8") as handle:
        return json.load(handle), proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def lab_image():
    """The lab image (lab/image.sh: built once, then cached)."""
    return build_image()


@contextlib.contextmanager
def seeded_lab(image):
    """The sample platform up as a compose project under podman, its database and Redis seeded; removed completely
    afterwards, whatever happened."""
    platform = LabPlatform(image)
    try:
        platform.up()
        platform.seed_db()
        seed_redis(platform)
        yield platform
    finally:
        platform.destroy()


@pytest.fixture(scope="module")
def lab(lab_image):
    """The seeded sample platform (seeded_lab) for one test module."""
    with seeded_lab(lab_image) as platform:
        yield platform


def seal_signed(data):
    """A manifest sealed and signed with the tests' key, as a backup writes it: for tests that change a set on
    purpose to reach the checks behind the signature."""
    return manifest.seal(signing.Signer().sign(data))
