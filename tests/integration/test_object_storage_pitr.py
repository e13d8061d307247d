"""The bucket as pgBackRest's second repository (repo2, on a real SeaweedFS over TLS): WAL archived into both,
a physical backup into both, a restore to a second from the bucket's repository alone with the local one gone,
and a bucket that is down costing the physical backup, never the set."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess

from pitr_helpers import changes_after, changes_before, iso, protect, second_boundary, state
from s3_server import bucket_objects, s3_vars
from sandbox import free_port

from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    BUCKET_CIPHER_PURPOSE,
    PGBACKREST_CIPHER_PURPOSE,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids, load


def _info(env, repo):
    """What pgBackRest itself lists in repository ``repo`` (1 local, 2 the bucket)."""
    config = os.path.join(env.backup_dir, "pgbackrest.conf.d", "pgbackrest.conf")
    proc = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", "--config=" + config, "--stanza=christmas",
                           "--repo=%d" % repo, "info", "--output=json"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)[0]


def test_wal_and_backups_go_to_the_bucket_and_a_second_comes_back_from_it_alone(
        platform, make_redis, config_dir, tmp_dir, run_playbook, s3_server, s3_bucket):
    key_text = base64.b64encode(os.urandom(32)).decode("ascii")
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook, christmas_encryption=True,
                  christmas_encryption_key=key_text, **s3_vars(s3_server, s3_bucket))
    # backup.yml took a physical backup into each repository; the set's manifest names both.
    physical = load(os.path.join(env.backup_dir, "manifest_%s.json" % complete_set_ids(env.backup_dir)[0])
                    )["db"]["physical"]
    bucket_backups = [backup["label"] for backup in _info(env, 2)["backup"]]
    assert physical["bucket"]["label"] in bucket_backups and physical["bucket"]["type"] == "full"
    assert physical["bucket"]["repo"] == "s3://%s/platform/pgbackrest" % s3_bucket
    assert physical["label"] in [backup["label"] for backup in _info(env, 1)["backup"]]

    # Only ciphertext in the bucket, under a pass of its own; the secret only in the 0600 config file.
    objects = bucket_objects(s3_server, s3_bucket)
    stored = {name: data for name, data in objects.items() if name.startswith("platform/pgbackrest/")}
    assert any("/archive/christmas/" in name and name.endswith(".gz") for name in stored)
    assert all(data.startswith(b"Salted__") for data in stored.values()), sorted(stored)
    config = os.path.join(env.backup_dir, "pgbackrest.conf.d", "pgbackrest.conf")
    with open(config, encoding="utf-8") as handle:
        text = handle.read()
    key = base64.b64decode(key_text)
    assert "repo2-cipher-pass=%s" % encryption.derived_secret(key, BUCKET_CIPHER_PURPOSE) in text
    assert encryption.derived_secret(key, PGBACKREST_CIPHER_PURPOSE) != encryption.derived_secret(
        key, BUCKET_CIPHER_PURPOSE)
    assert "repo2-s3-key-secret=%s" % s3_server.secret_key in text
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert s3_server.secret_key not in env.first.output

    changes_before(env)
    run_playbook("archive", env.host_vars)
    expected = state(env)
    target = second_boundary()
    changes_after(env)
    archived = run_playbook("archive", env.host_vars, verbosity=3)
    assert s3_server.secret_key not in archived.output
    verified = run_playbook("verify_backup", env.host_vars, {"vault": "s3"})
    assert re.search(r"recovery window: .*db \d{4}-", verified.stdout)  # pgbackrest --repo=2 verify found no fault
    history = {name: data for name, data in bucket_objects(s3_server, s3_bucket).items()
               if name.startswith("platform/pitr/")}
    assert any("/redis/" in name for name in history) and any("/config/" in name for name in history)
    assert not any(b"fill:before" in data or b"max_position" in data for data in history.values())  # sealed

    # The host's history is lost with its disk: the local repository, the AOF and the config versions. The bucket's
    # alone restores the second, the database from repo2, Redis and the config tree from its pitr/.
    env.platform.cluster.stop()
    for lost in ("pgbackrest", "pitr"):
        shutil.rmtree(os.path.join(env.backup_dir, lost))
    restored = run_playbook("restore_full", env.host_vars, {"source": "s3", "target_time": iso(target)}, verbosity=3)
    assert "The platform is restored to %s from the bucket" % iso(target) in restored.stdout
    assert ", Redis and the config tree from its history (s3://%s/platform/pitr/" % s3_bucket in restored.stdout
    assert state(env) == expected
    assert not env.platform.cluster.sql("SELECT pg_is_in_recovery()")[0][0]
    assert s3_server.secret_key not in restored.output and key_text not in restored.output
    assert not os.path.exists(os.path.join(env.backup_dir, "pitr"))  # this host's history is not made up from it

    # Archiving goes on into both: the local repository is there again, and the next shipment lands in it.
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM2', 'sell', 1, 'after restore')")
    run_playbook("archive", env.host_vars)
    assert _info(env, 1)["archive"] and _info(env, 2)["archive"]


def test_a_bucket_that_is_down_costs_the_physical_backup_never_the_set(
        platform, make_redis, config_dir, tmp_dir, run_playbook, s3_server, s3_bucket):
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook, **s3_vars(s3_server, s3_bucket))
    down = dict(env.host_vars, christmas_s3_endpoint="localhost:%d" % free_port())
    sets = complete_set_ids(env.backup_dir)
    failed = run_playbook("backup", down, expect_ok=False)
    assert failed.failure_message().startswith("S3 endpoint %s: " % down["christmas_s3_endpoint"])
    after = complete_set_ids(env.backup_dir)
    assert len(after) == len(sets) + 1  # the set was made, complete, without a physical backup
    assert "physical" not in load(os.path.join(env.backup_dir, "manifest_%s.json" % after[0]))["db"]
    shipped = run_playbook("archive", down, expect_ok=False)
    assert shipped.failure_message().startswith("S3 endpoint %s: " % down["christmas_s3_endpoint"])
    assert "waits for the bucket" in shipped.failure_message()
    assert bucket_objects(s3_server, s3_bucket)  # what the first backup put there is untouched
