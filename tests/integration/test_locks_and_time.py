"""Locks and waits, and sets that lie about time: real restores, backups and retention against real servers."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import seed_platform

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import manifest_name, set_dir_name
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
