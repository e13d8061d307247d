"""What the fault-injection tests share: scripts/backup.py run as an operator runs it, killed with its children, and
a backup directory read the way retention and ``latest`` read it.

Not a test module; the fault tests import it (their directory is on sys.path, as pytest puts it there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from conftest import ROOT, group_members, kill_group, seal_signed
from sandbox import PG_BIN

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    MANIFEST_RE,
    complete_set_ids,
    manifest_name,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

RESTORE_SCRIPT = os.path.join(ROOT, "scripts", "restore.py")
PROGRESS_RE = re.compile(r"^\[ *\d+\.\ds\] (.*)$")
SET_DIR_RE = re.compile(r"^set_(\d{8}_\d{6})$")
LEFTOVER_RE = re.compile(r"^(\.set_\d{8}_\d{6}\.partial|\.manifest_\d{8}_\d{6}\.json\.tmp)$")
VERIFY_TARGET = PgTarget(bin_dir=PG_BIN)  # only pg_restore --list runs; it needs no connection


# ---------------------------------------------------------------- data big enough that each phase takes a moment


def one_line(err):
    """The error's message, which must be a single non-empty line."""
    message = str(err)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    return message


def add_market_rows(platform, rows):
    platform.sql(
        "INSERT INTO market_data SELECT timestamptz '2025-01-01 00:00:00+00' + i * interval '1 second', "
        "'SYM' || (i %% 17), 100 + (i %% 1000) / 10.0, i %% 5000 FROM generate_series(1, %d) AS i" % rows)


def fill_redis(server, keys, db=1, value=b"v" * 100):
    pipe = server.client(db).pipeline(transaction=False)
    for i in range(keys):
        pipe.set(b"fill:%d" % i, value)
    pipe.execute()


def make_tree(root, files, size, dirs=10):
    """``files`` files of ``size`` random bytes spread over ``dirs`` directories."""
    for index in range(files):
        directory = os.path.join(root, "d%02d" % (index % dirs))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "f%04d.yml" % index), "wb") as handle:
            handle.write(os.urandom(size))
    return root


# ---------------------------------------------------------------- running scripts/backup.py


def run_script(argv, env, timeout=180):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def report_of(proc):
    """The JSON report of a run that must have succeeded."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def error_of(proc):
    """The one error line of a run that must have failed: exit 1, no report, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if not PROGRESS_RE.match(line)]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-3000:]
    return errors[0]


class BackupProcess:
    """scripts/backup.py in its own session (so its children can be found), stderr lines collected as they come.

    ``kill_on`` (a regex) makes the reader SIGKILL the backup the moment a matching line arrives: no polling delay.
    """

    def __init__(self, argv, env, kill_on=None):
        self.kill_on = re.compile(kill_on) if kill_on else None
        self.lines = []  # (seconds since start, text)
        self.killed_at = None
        self.returncode = self.stdout = None
        self.orphans = 0
        self._seen = threading.Condition()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if self.kill_on and self.killed_at is None and self.kill_on.search(text):
                self.kill()
            with self._seen:
                self.lines.append((time.monotonic() - self.started, text))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def elapsed(self):
        return time.monotonic() - self.started

    def running(self):
        return self.proc.poll() is None

    def wait_line(self, pattern, timeout=60):
        """True once a stderr line matches ``pattern``; False if the backup ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(regex.search(text) for _t, text in self.lines):
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    return False
                self._seen.wait(0.05)
        return True

    def kill(self):
        """SIGKILL the backup itself (not its group: its children must cope, as after an OOM kill)."""
        if self.killed_at is None and self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                self.killed_at = self.elapsed()
            except ProcessLookupError:
                pass

    def finish(self, timeout=180):
        """Reap the backup, then SIGKILL what is left of its process group; returns (returncode, stdout).

        Safe to call again (e.g. from a ``finally``): it then only returns what the first call found.
        """
        if self.returncode is None:
            try:
                self.proc.wait(timeout)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                self.orphans = _outliving(self.pid)
                kill_group(self.pid)
            self._reader.join(10)
            self.stdout = self.proc.stdout.read().decode("utf-8", "replace")
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.returncode = self.proc.returncode
        return self.returncode, self.stdout

    def result(self):
        """The finished run as subprocess.run would return it, for report_of and error_of."""
        self.finish()
        return subprocess.CompletedProcess(self.proc.args, self.returncode, self.stdout,
                                           "\n".join(text for _t, text in self.lines))

    def progress(self):
        """The progress messages printed (after the ``[  1.2s]`` prefix), in order."""
        return [m.group(1) for m in (PROGRESS_RE.match(text) for _t, text in self.lines) if m]


def _outliving(pgid, grace=0.05):
    """How many processes of the group still run a moment after the backup itself ended (pg_dump workers)."""
    if group_members(pgid):
        time.sleep(grace)
    return len(group_members(pgid))


# ---------------------------------------------------------------- a backup directory as retention and latest see it


def leftovers(backup_dir):
    """What a killed or failed backup may leave: partial dirs, temporary manifests, set dirs without a manifest."""
    names = os.listdir(backup_dir)
    sealed = {m.group(1) for m in map(MANIFEST_RE.match, names) if m}
    return sorted(name for name in names if LEFTOVER_RE.match(name)
                  or (SET_DIR_RE.match(name) and SET_DIR_RE.match(name).group(1) not in sealed))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(backup_dir, set_id):
    """SHA-256 of the manifest and of every file of the set, by relative path; None when the manifest is gone."""
    manifest = os.path.join(backup_dir, manifest_name(set_id))
    if not os.path.isfile(manifest):
        return None
    prints = {manifest_name(set_id): sha256_of(manifest)}
    for base, _dirs, files in os.walk(os.path.join(backup_dir, set_dir_name(set_id))):
        for name in files:
            path = os.path.join(base, name)
            prints[os.path.relpath(path, backup_dir)] = sha256_of(path)
    return prints


def fingerprints(backup_dir):
    return {set_id: fingerprint(backup_dir, set_id) for set_id in complete_set_ids(backup_dir)}


def verify_problems(backup_dir, set_ids=None):
    """Deep-verify the given (default: every visible) set; returns {set_id: one-line problem}."""
    problems = {}
    for set_id in complete_set_ids(backup_dir) if set_ids is None else set_ids:
        try:
            verify_set(os.path.join(backup_dir, manifest_name(set_id)), deep=True, pg_target=VERIFY_TARGET)
        except RecoveryError as err:
            problems[set_id] = str(err)
    return problems


def set_id_days_ago(days, seconds=0):
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() - days * 86400 - seconds))


def copy_set(source_dir, set_id, backup_dir, new_id, started_at=None):
    """A real set copied under another id: its dir copied, the manifest's id and paths rewritten and re-sealed. Its
    manifest records that it was made at ``started_at``, by default at the time its id says."""
    shutil.copytree(os.path.join(source_dir, set_dir_name(set_id)), os.path.join(backup_dir, set_dir_name(new_id)),
                    symlinks=True)
    with open(os.path.join(source_dir, manifest_name(set_id)), encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest.pop("manifest_sha256")
    manifest["set_id"] = new_id
    manifest["started_at"] = manifest["finished_at"] = started_at or time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.strptime(new_id, "%Y%m%d_%H%M%S"))
    for artifact in manifest["artifacts"]:
        artifact["path"] = "%s/%s" % (set_dir_name(new_id), artifact["path"].split("/", 1)[1])
    path = os.path.join(backup_dir, manifest_name(new_id))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(manifest), handle, indent=2)
    return path


def remove_set(backup_dir, set_id):
    """As retention does it: the manifest first."""
    os.unlink(os.path.join(backup_dir, manifest_name(set_id)))
    shutil.rmtree(os.path.join(backup_dir, set_dir_name(set_id)))


class DirSampler(threading.Thread):
    """Lists a backup directory every millisecond; remembers the most in-progress entries seen at once."""

    def __init__(self, backup_dir):
        super().__init__(daemon=True)
        self.backup_dir, self.most_in_progress, self.rounds = backup_dir, 0, 0
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            try:
                names = os.listdir(self.backup_dir)
            except FileNotFoundError:
                names = []
            sealed = {m.group(1) for m in map(MANIFEST_RE.match, names) if m}
            busy = [n for n in names if n.endswith(".partial")
                    or (SET_DIR_RE.match(n) and SET_DIR_RE.match(n).group(1) not in sealed)]
            self.most_in_progress = max(self.most_in_progress, len(busy))
            self.rounds += 1
            self._done.wait(0.001)

    def stop(self):
        self._done.set()
        self.join()
