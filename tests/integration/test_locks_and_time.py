"""Locks and waits, and sets that lie about time: real restores, backups and retention against real servers."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time

import psycopg2
import pytest
from conftest import connection_vars, seed_platform
from faults.fault_helpers import copy_set

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    manifest_name,
    resolve_manifest_path,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import set_time
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set


def _quiet(_message):
    pass


def _target(platform, cluster=None, **extra):
    cluster = cluster or platform.cluster
    return PgTarget(host="127.0.0.1", port=cluster.port, password=platform.password, admin_user="postgres",
                    admin_password=cluster.password, **extra)


def _wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.05)


def _wait_until_past(set_id):
    """Retention with 0 days deletes a set once the clock is past its second."""
    _wait_for(lambda: time.time() >= set_time(set_id) + 1, "the clock to pass set %s" % set_id)


class PausedRestore(threading.Thread):
    """A real restore that stops at the start of its database load until ``go`` is set."""

    def __init__(self, manifest, backup_dir, db):
        super().__init__(daemon=True)
        self.manifest, self.backup_dir, self.db = manifest, backup_dir, db
        self.loading, self.go = threading.Event(), threading.Event()
        self.result = self.error = None

    def _progress(self, message):
        if message.startswith("creating missing roles and scratch database"):
            self.loading.set()
            assert self.go.wait(120), "the test never let the restore go on"

    def run(self):
        try:
            self.result = restore_set(self.manifest, self.backup_dir, ["db"], db=self.db, force=True,
                                      progress=self._progress)
        except BaseException as err:  # noqa: BLE001 - reported to the test thread
            self.error = err
        finally:
            self.loading.set()


def test_retention_never_deletes_a_set_while_a_restore_reads_it(make_cluster, tmp_dir):
    platform = seed_platform(make_cluster())
    before = platform.snapshot()
    backup_dir = os.path.join(tmp_dir, "backups")
    old = make_backup_set(backup_dir, db=_target(platform), progress=_quiet)["set_id"]
    target_cluster = make_cluster()
    restore = PausedRestore(manifest_name(old), backup_dir, _target(platform, target_cluster))
    restore.start()
    try:
        assert restore.loading.wait(120) and restore.error is None, restore.error
        _wait_until_past(old)
        # Readers share the lock: a verification of the same set goes on while the restore holds it.
        assert verify_set(manifest_name(old), backup_dir)[0]["ok"]
        # A backup whose retention would delete the set being restored refuses, writing nothing.
        with pytest.raises(RecoveryError) as refused:
            make_backup_set(backup_dir, db=_target(platform), retention_days=0, progress=_quiet)
        assert "is locked by a restore, rehearsal, verification or offsite copy reading its sets" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert os.path.isfile(os.path.join(backup_dir, manifest_name(old)))
        assert os.path.isdir(os.path.join(backup_dir, set_dir_name(old)))
        assert sorted(n for n in os.listdir(backup_dir) if n.startswith("manifest_")) == [manifest_name(old)]
        # One that waits gets the lock only once the restore has ended.
        waiting = {}
        backup = threading.Thread(target=lambda: waiting.update(make_backup_set(
            backup_dir, db=_target(platform), retention_days=0, lock_wait=120, progress=_quiet)), daemon=True)
        backup.start()
    finally:
        restore.go.set()
        restore.join(180)
    assert restore.error is None, restore.error
    assert restore.result["components"]["db"]["state"]
    restored = type(platform)(target_cluster, platform.password, platform.analyst_password)
    assert restored.snapshot() == before
    backup.join(180)
    assert waiting["pruned"] == [old]
    assert not os.path.exists(os.path.join(backup_dir, set_dir_name(old)))


def test_backup_gives_up_on_a_table_locked_access_exclusive_naming_it_and_its_session(
        run_playbook, platform, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    blocker = psycopg2.connect(host="127.0.0.1", port=platform.cluster.port, dbname="christmas", user="christmas",
                               password=platform.password, application_name="orders-migration")
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # psycopg2 opened the transaction
        began = time.monotonic()
        host_vars = dict(connection_vars(platform, backup_dir=backup_dir), christmas_db_lock_timeout=2)
        run = run_playbook("backup", host_vars, {"skip_redis": True, "skip_config": True}, expect_ok=False)
        message = run.failure_message()
        assert time.monotonic() - began < 50
        assert re.search(r"^pg_dump waited 2 s for a lock on public.orders held by pid %d \(user christmas, "
                         r"application orders-migration, state idle in transaction, since \S+Z\): "
                         r"end that session or retry$"
                         % blocker.get_backend_pid(), message), message
        # No set looks complete, and the directory's lock is free while the blocker still holds its table.
        assert not [name for name in os.listdir(backup_dir) if name.startswith(("manifest_", "set_"))]
        with DirectoryLock(backup_dir):
            pass
    finally:
        blocker.rollback()
        blocker.close()
    report = make_backup_set(backup_dir, db=_target(platform), db_lock_timeout=2, progress=_quiet)
    assert report["row_counts"]["public.orders"] == 700
    assert os.path.isfile(os.path.join(backup_dir, manifest_name(report["set_id"])))


def test_manifest_names_with_impossible_dates_are_reported_and_ignored_after_a_backup(platform, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    old = make_backup_set(backup_dir, db=_target(platform), progress=_quiet)["set_id"]
    planted = [os.path.join(backup_dir, manifest_name(i)) for i in ("20261399_250000", "20260231_120000")]
    for path in planted:
        shutil.copy(os.path.join(backup_dir, manifest_name(old)), path)
    _wait_until_past(old)
    report = make_backup_set(backup_dir, db=_target(platform), retention_days=0, progress=_quiet)
    assert report["ignored_manifests"] == ["%s ignored: %s is not a possible date" % (path, os.path.basename(
        path)[9:-5]) for path in sorted(planted)]
    assert report["pruned"] == [old] and not os.path.exists(os.path.join(backup_dir, set_dir_name(old)))
    assert all(os.path.isfile(path) for path in planted)
    assert resolve_manifest_path("latest", backup_dir) == os.path.join(backup_dir, manifest_name(report["set_id"]))


def test_sets_dated_in_the_future_are_reported_and_never_latest_nor_pruned(platform, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    real = make_backup_set(backup_dir, db=_target(platform), progress=_quiet)["set_id"]
    # A set from a host with its clock ahead, or a planted one.
    future = copy_set(backup_dir, real, backup_dir, "20991231_235959")
    # A name of today, but a recorded start a day ahead: the recorded (sealed) time is what counts.
    ahead = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    skewed = copy_set(backup_dir, real, backup_dir, "20000101_000000", started_at=ahead)

    assert resolve_manifest_path("latest", backup_dir) == os.path.join(backup_dir, manifest_name(real))
    restored = restore_set("latest", backup_dir, ["db"], db=_target(platform), force=True, progress=_quiet)
    assert restored["set_id"] == real
    assert platform.cluster.sql("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
                                "ON d.oid = s.setdatabase WHERE d.datname = 'christmas' AND s.setrole = 0") \
        [0][0].count("christmas_recovery.restored_set=%s" % real) == 1

    _wait_until_past(real)
    report = make_backup_set(backup_dir, db=_target(platform), retention_days=0, progress=_quiet)
    assert report["pruned"] == [real]
    assert [line.split(" ignored: ")[0] for line in report["ignored_manifests"]] == [future, skewed]
    assert all("ahead of this host's clock" in line for line in report["ignored_manifests"])
    assert os.path.isfile(future) and os.path.isfile(skewed)
    assert resolve_manifest_path("latest", backup_dir) == os.path.join(backup_dir, manifest_name(report["set_id"]))
    # Allowed a skew that wide, the planted set would be the newest.
    assert resolve_manifest_path("latest", backup_dir, skew=10**10) == future
