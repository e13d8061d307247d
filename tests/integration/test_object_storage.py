"""Sets in a real S3 server (SeaweedFS over TLS, tests/s3_server.py): complete only with their manifest, checked on
the way up and on the way down, refused by name when the bucket's copy was changed, and brought back by the
playbooks with the local copy gone."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError
from conftest import (
    ROOT,
    connection_vars,
    file_contents,
    read_metrics,
    redis_state,
    seed_redis,
    set_files,
    tree_state,
    value,
)
from faults.fault_helpers import copy_set, set_id_days_ago
from s3_server import bucket_objects, s3_vars
from sandbox import S3Server, free_port, make_tls_files

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import Bucket, Store
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, manifest, signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    complete_set_ids,
    load,
    set_id_time,
)
from ansible_collections.christmas.recovery.plugins.module_utils.transport import bucket, bucket_history, offsite

MARKER = "bucket-marker-%s" % secrets.token_hex(8)


def _quiet(_message):
    return None


def _store(server, name, prefix="db1", **changes):
    settings = dict(endpoint=server.endpoint, bucket=name, prefix=prefix, region="us-east-1",
                    access_key=server.access_key, secret_key=server.secret_key, uri_style="path",
                    ca_file=server.ca_file, validate_certs=True, timeout=10)
    settings.update(changes)
    return Store(Bucket(**settings), jobs=2, progress=_quiet)


def _config_set(tmp_dir, big_bytes=0):
    """One complete config set holding MARKER (and a file of ``big_bytes`` random bytes), in its own backup dir."""
    config = os.path.join(tmp_dir, "config")
    os.makedirs(os.path.join(config, "strategies"))
    with open(os.path.join(config, "strategies", "secret.yml"), "w", encoding="utf-8") as handle:
        handle.write("api_key: %s\n" % MARKER)
    if big_bytes:
        with open(os.path.join(config, "model.bin"), "wb") as handle:
            for _ in range(big_bytes // (1 << 20)):
                handle.write(os.urandom(1 << 20))
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config, progress=_quiet)
    return backup_dir, report["set_id"]


def test_a_set_goes_up_checked_and_comes_back_identical(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir, big_bytes=40 << 20)  # one file in three parts
    store = _store(s3_server, s3_bucket)
    said = []
    store.progress, store.progress_every = said.append, 0  # a line for every chunk sent

    report = bucket.send_sets(backup_dir, store, 30)
    assert report["sent"] == [set_id] and report["sets"] == [set_id]
    totals = [line for line in said if re.match(r"^uploaded [\d.]+ of 40\.\d MiB \([\d.]+ MiB/s\)$", line)]
    assert totals and totals[-1].startswith("uploaded 40.")  # the big file's progress, up to all of it

    client = s3_server.client()
    # The server holds each file's SHA-256, as it computed it from the parts.
    for artifact in load(os.path.join(backup_dir, "manifest_%s.json" % set_id))["artifacts"]:
        head = client.head_object(Bucket=s3_bucket, Key="db1/sets/" + artifact["path"], ChecksumMode="ENABLED")
        data = client.get_object(Bucket=s3_bucket, Key="db1/sets/" + artifact["path"])["Body"].read()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        assert head["ChecksumSHA256"]
    assert bucket.send_sets(backup_dir, store, 30)["sent"] == []  # already there

    other = os.path.join(tmp_dir, "other-host")
    fetched = bucket.fetch_set(other, store, "latest", signing.Trust())
    assert fetched["set_id"] == set_id and fetched["signature"]["signed"]
    assert complete_set_ids(other) == []  # only in .incoming until checked and published
    offsite.receive_sets(other, progress=_quiet)
    assert complete_set_ids(other) == [set_id]
    assert set_files(other, set_id) == set_files(backup_dir, set_id)
    modes = {os.lstat(os.path.join(base, name)).st_mode & 0o777
             for base, dirs, files in os.walk(other) for name in dirs + files}
    assert modes <= {0o600, 0o700}


def test_a_killed_upload_never_looks_complete_and_the_next_run_finishes_it(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir, big_bytes=160 << 20)
    script = ("import json, sys; sys.path.insert(0, %r)\n"
              "from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import Bucket, Store\n"
              "from ansible_collections.christmas.recovery.plugins.module_utils.transport import bucket\n"
              "bucket.send_sets(%r, Store(Bucket(**json.load(sys.stdin)), 1), 30)\n"
              % (os.path.join(ROOT, ".collections"), backup_dir))
    secret = json.dumps(_store(s3_server, s3_bucket).bucket._asdict())
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)  # the secret on stdin, not argv
    child.stdin.write(secret.encode())
    child.stdin.close()
    client = s3_server.client()
    deadline = time.monotonic() + 120
    while not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
        assert child.poll() is None, "the upload ended before it could be killed"
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()

    store = _store(s3_server, s3_bucket)
    assert bucket.complete_ids(bucket.bucket_sets(store)) == []
    assert not any(key.endswith(".json") for key in bucket_objects(s3_server, s3_bucket))

    assert bucket.send_sets(backup_dir, store, 30)["sent"] == [set_id]
    assert bucket.complete_ids(bucket.bucket_sets(store)) == [set_id]
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")  # the killed run's parts are gone


def test_an_object_changed_or_deleted_in_the_bucket_is_refused_by_name(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir)
    store = _store(s3_server, s3_bucket)
    bucket.send_sets(backup_dir, store, 30)
    client = s3_server.client()
    artifact = load(os.path.join(backup_dir, "manifest_%s.json" % set_id))["artifacts"][0]
    key = "db1/sets/" + artifact["path"]
    original = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=original[:-1] + bytes([original[-1] ^ 1]))

    other = os.path.join(tmp_dir, "other-host")
    with pytest.raises(RecoveryError, match=r"^object s3://%s/%s does not match the signed manifest of set %s: "
                                            r"SHA-256 mismatch" % (s3_bucket, key, set_id)):
        bucket.fetch_set(other, store, set_id, signing.Trust())
    assert not os.path.exists(os.path.join(other, offsite.INCOMING, set_id))
    with pytest.raises(RecoveryError, match="does not match the signed manifest"):
        bucket.verify_bucket_set(other, store, set_id, signing.Trust())

    client.delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(RecoveryError, match=r"^object s3://%s/%s is missing from the bucket$" % (s3_bucket, key)):
        bucket.fetch_set(other, store, set_id, signing.Trust())

    # A manifest rewritten in the bucket to match changed objects, its checksum recomputed: its signature fails.
    manifest_key = "db1/sets/manifest_%s.json" % set_id
    forged = json.loads(client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read())
    forged["artifacts"][0]["sha256"] = hashlib.sha256(b"planted").hexdigest()
    client.put_object(Bucket=s3_bucket, Key=manifest_key, Body=json.dumps(manifest.seal(forged)).encode())
    with pytest.raises(RecoveryError, match=r"^set %s .*signature" % set_id):
        bucket.fetch_set(other, store, set_id, signing.Trust())
    assert complete_set_ids(other) == []


def test_a_server_out_of_space_fails_the_upload_in_one_line_and_no_set_looks_complete(tmp_dir):
    small = S3Server(os.path.join(tmp_dir, "small-s3"), volume_mb=4, volumes=2)  # 8 MiB in all
    try:
        small.start()
        small.client().create_bucket(Bucket="christmas-small")
        backup_dir, set_id = _config_set(tmp_dir, big_bytes=24 << 20)
        with pytest.raises(RecoveryError) as refused:
            bucket.send_sets(backup_dir, _store(small, "christmas-small"), 30)
        message = str(refused.value)
        assert message.startswith("S3 endpoint %s: " % small.endpoint) and "\n" not in message, message
        assert "out of space" in message and small.secret_key not in message
        assert bucket.complete_ids(bucket.bucket_sets(_store(small, "christmas-small"))) == []
        assert complete_set_ids(backup_dir) == [set_id]  # the local set is untouched
    finally:
        small.destroy()


def test_bad_credentials_bucket_certificate_and_endpoint_are_one_line_each(s3_server, s3_bucket, tmp_dir):
    backup_dir, _set_id = _config_set(tmp_dir)
    os.makedirs(os.path.join(tmp_dir, "other-ca"))
    other_ca = make_tls_files(os.path.join(tmp_dir, "other-ca"))[0]  # a CA that did not sign the server's certificate
    down = "localhost:%d" % free_port()
    cases = [
        (dict(secret_key="wrong" + s3_server.secret_key), "the secret key is wrong"),
        (dict(access_key="nobody"), "the access key is not known to the server"),
        (dict(bucket="christmas-missing"), "bucket christmas-missing does not exist"),
        (dict(ca_file=other_ca), "its TLS certificate is not trusted"),
        (dict(ca_file=None), "its TLS certificate is not trusted"),
        (dict(endpoint=down), "Could not connect"),
    ]
    for changes, expected in cases:
        endpoint = changes.get("endpoint", s3_server.endpoint)
        with pytest.raises(RecoveryError) as caught:
            bucket.send_sets(backup_dir, _store(s3_server, s3_bucket, **changes), 30)
        message = str(caught.value)
        assert message.startswith("S3 endpoint %s: " % endpoint) and expected in message, (changes, message)
        assert "\n" not in message and s3_server.secret_key not in message
    assert bucket_objects(s3_server, s3_bucket) == {}
    for changes, expected in [(dict(endpoint="https://" + s3_server.endpoint), "is not host:port"),
                              (dict(bucket="A_bad_name"), "is not a bucket name"),
                              (dict(prefix="../escape"), "is not a key prefix")]:
        with pytest.raises(RecoveryError, match=expected):
            _store(s3_server, s3_bucket, **changes)


def test_retention_in_the_bucket_keeps_the_newest(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir)
    old = [set_id_days_ago(days) for days in (40, 35)]
    for old_id in old:
        copy_set(backup_dir, set_id, backup_dir, old_id)
    store = _store(s3_server, s3_bucket)
    assert bucket.send_sets(backup_dir, store, None)["sent"] == old + [set_id]
    report = bucket.send_sets(backup_dir, store, 30)
    assert report["pruned"] == [old[1], old[0]] and report["sets"] == [set_id]
    assert {key.split("/")[2] for key in bucket_objects(s3_server, s3_bucket)} == {
        "manifest_%s.json" % set_id, "set_%s" % set_id}


def test_only_ciphertext_reaches_the_bucket_and_the_key_opens_it(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir)
    key = encryption.load_key(base64.b64encode(os.urandom(32)).decode(), None)
    store = _store(s3_server, s3_bucket)
    bucket.send_sets(backup_dir, store, 30, key=key, signer=signing.Signer())
    objects = bucket_objects(s3_server, s3_bucket)
    assert objects and not any(MARKER.encode() in data for data in objects.values())

    other = os.path.join(tmp_dir, "other-host")
    bucket.fetch_set(other, store, set_id, signing.Trust())
    with pytest.raises(RecoveryError, match="needs the encryption key"):
        offsite.receive_sets(other, decrypt=True, progress=_quiet)
    bucket.fetch_set(other, store, set_id, signing.Trust())
    offsite.receive_sets(other, decrypt=True, key=key, progress=_quiet)
    assert any(MARKER.encode() in data for data in file_contents(other).values())


def test_with_object_lock_no_uploaded_version_can_be_deleted_before_its_lock_ends(s3_server, s3_bucket, tmp_dir):
    backup_dir, set_id = _config_set(tmp_dir)
    with pytest.raises(RecoveryError, match="^S3 endpoint %s: bucket %s has no Object Lock" % (
            s3_server.endpoint, s3_bucket)):
        bucket.send_sets(backup_dir, _store(s3_server, s3_bucket, lock_days=1), 30)
    assert bucket_objects(s3_server, s3_bucket) == {}  # refused before anything was sent

    client = s3_server.client()
    locked = "christmas-locked-%s" % secrets.token_hex(4)  # left to the server's removal: its objects cannot go
    client.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    bucket.send_sets(backup_dir, _store(s3_server, locked, lock_days=2), 30)
    versions = client.list_object_versions(Bucket=locked)["Versions"]
    assert {v["Key"] for v in versions} >= {"db1/sets/manifest_%s.json" % set_id, "db1/sets/set_%s/config.tar" % set_id}
    for version in versions:
        head = client.head_object(Bucket=locked, Key=version["Key"], VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"].timestamp() > time.time() + 86400
        with pytest.raises(ClientError, match="AccessDenied"):
            client.delete_object(Bucket=locked, Key=version["Key"], VersionId=version["VersionId"])
    assert len(client.list_object_versions(Bucket=locked)["Versions"]) == len(versions)


def test_the_history_mirror_sends_what_changed_indexes_last_and_comes_back_sealed_or_plain(
        s3_server, s3_bucket, tmp_dir):
    backup_dir, pitr_dir = os.path.join(tmp_dir, "backups"), os.path.join(tmp_dir, "backups", "pitr")
    files = {"redis/appendonly.aof.1.incr.aof": b"SET fill %s\n" % MARKER.encode(), "redis/index.json": b"{}",
             "config/v1.tar.gz": MARKER.encode() * 10, "config/versions.json": b"[]"}
    for relative, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(pitr_dir, relative)), exist_ok=True)
        with open(os.path.join(pitr_dir, relative), "wb") as handle:
            handle.write(data)
    store = _store(s3_server, s3_bucket)
    uploaded = []
    real_upload = store.upload
    store.upload = lambda uploads: (uploaded.append([u.name for u in uploads]), real_upload(uploads))
    assert bucket_history.send_history(backup_dir, pitr_dir, store, progress=_quiet)["sent"] == 4
    assert [sorted(batch) for batch in uploaded] == [["pitr/config/v1.tar.gz", "pitr/redis/appendonly.aof.1.incr.aof"],
                                                     ["pitr/config/versions.json", "pitr/redis/index.json"]]
    assert bucket_history.send_history(backup_dir, pitr_dir, store, progress=_quiet)["sent"] == 0
    os.unlink(os.path.join(pitr_dir, "config", "v1.tar.gz"))
    with open(os.path.join(pitr_dir, "redis", "index.json"), "wb") as handle:
        handle.write(b'{"generation": 2}')
    again = bucket_history.send_history(backup_dir, pitr_dir, store, progress=_quiet)
    assert (again["sent"], again["deleted"]) == (1, 1)
    del files["config/v1.tar.gz"]
    files["redis/index.json"] = b'{"generation": 2}'
    fetched = bucket_history.fetch_history(backup_dir, store, progress=_quiet)
    assert file_contents(fetched["pitr_dir"]) == files

    key = os.urandom(32)
    sealed_store = _store(s3_server, s3_bucket, prefix="sealed")
    bucket_history.send_history(backup_dir, pitr_dir, sealed_store, key=key, progress=_quiet)
    objects = {name: data for name, data in bucket_objects(s3_server, s3_bucket).items() if name.startswith("sealed/")}
    assert "sealed/pitr/KEY_ID" in objects and not any(MARKER.encode() in data for data in objects.values())
    with pytest.raises(RecoveryError, match="is encrypted .*: fetching it needs the encryption key"):
        bucket_history.fetch_history(backup_dir, sealed_store, progress=_quiet)
    assert file_contents(bucket_history.fetch_history(backup_dir, sealed_store, key, _quiet)["pitr_dir"]) == files


# ---------------------------------------------------------------- through the playbooks


def test_backup_uploads_and_restore_full_comes_back_from_the_bucket_alone(
        run_playbook, platform, make_redis, config_dir, tmp_dir, s3_server, s3_bucket):
    server = make_redis()
    redis_before = seed_redis(server)
    db_before = platform.snapshot()
    tree_before = tree_state(config_dir)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = dict(connection_vars(platform, server, config_dir, backup_dir), **s3_vars(s3_server, s3_bucket))
    backup = run_playbook("backup", host_vars)
    set_id = complete_set_ids(backup_dir)[0]
    assert "uploaded 1 set(s)" in backup.stdout and s3_server.secret_key not in backup.output
    assert "platform/sets/manifest_%s.json" % set_id in bucket_objects(s3_server, s3_bucket)
    upload = read_metrics(os.path.join(tmp_dir, "metrics"))["christmas_recovery_upload.prom"]
    assert value(upload, "last_run_success", kind="upload") == 1
    assert value(upload, "upload_sets", kind="upload") == 1
    assert value(upload, "bucket_complete_sets", kind="upload") == 1
    assert value(upload, "bucket_newest_set_timestamp_seconds", kind="upload") == set_id_time(set_id)
    verify = run_playbook("verify_backup", host_vars, {"vault": "s3"})
    assert "Set %s in s3://%s/platform/sets/ is intact" % (set_id, s3_bucket) in verify.stdout

    shutil.rmtree(backup_dir)  # the host's own copy is lost with the damage
    platform.sql("DELETE FROM market_data WHERE symbol = 'SYM3'; UPDATE orders SET qty = 0")
    server.client(0).flushall()
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")

    dry = run_playbook("restore_full", host_vars, {"source": "s3"}, check=True, expect_ok=False)
    assert dry.failure_message().startswith("dry run: set %s would first be downloaded from s3://%s/platform/sets/" % (
        set_id, s3_bucket))
    assert not os.path.exists(backup_dir) or complete_set_ids(backup_dir) == []
    restore = run_playbook("restore_full", host_vars, {"source": "s3"})
    assert "Set %s from s3://%s/platform/sets/ fetched" % (set_id, s3_bucket) in restore.stdout
    assert platform.snapshot() == db_before
    assert redis_state(server) == redis_before
    assert tree_state(config_dir) == tree_before

    # Without source, the bucket stands in for a local copy that is missing, and says so.
    shutil.rmtree(backup_dir)
    platform.sql("DELETE FROM orders WHERE id < 100")
    fallback = run_playbook("restore_db", host_vars)
    assert "No complete set in %s: the set comes from the bucket instead" % backup_dir in fallback.stdout
    assert platform.snapshot() == db_before


def test_a_backup_whose_bucket_is_down_stays_complete_here_and_the_next_run_uploads_it(
        run_playbook, platform, make_redis, config_dir, tmp_dir, s3_server, s3_bucket):
    server = make_redis()
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = dict(connection_vars(platform, server, config_dir, backup_dir), **s3_vars(s3_server, s3_bucket))
    down = dict(host_vars, christmas_s3_endpoint="localhost:%d" % free_port())
    failed = run_playbook("backup", down, expect_ok=False)
    message = failed.failure_message()
    assert message.startswith("S3 endpoint %s: " % down["christmas_s3_endpoint"]), message
    first = complete_set_ids(backup_dir)
    assert len(first) == 1 and bucket_objects(s3_server, s3_bucket) == {}
    upload = read_metrics(os.path.join(tmp_dir, "metrics"))["christmas_recovery_upload.prom"]
    assert value(upload, "last_run_success", kind="upload") == 0

    run_playbook("backup", host_vars)
    store = _store(s3_server, s3_bucket, prefix="platform")
    assert bucket.complete_ids(bucket.bucket_sets(store)) == complete_set_ids(backup_dir) and len(
        complete_set_ids(backup_dir)) == 2


def test_a_damaged_local_set_is_set_aside_and_the_bucket_copy_restored_instead(
        run_playbook, platform, make_redis, config_dir, tmp_dir, s3_server, s3_bucket):
    server = make_redis()
    db_before = platform.snapshot()
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = dict(connection_vars(platform, server, config_dir, backup_dir), **s3_vars(s3_server, s3_bucket))
    run_playbook("backup", host_vars)
    set_id = complete_set_ids(backup_dir)[0]
    files = file_contents(os.path.join(backup_dir, "set_%s" % set_id))
    name = max(files, key=lambda relative: len(files[relative]))
    dump = os.path.join(backup_dir, "set_%s" % set_id, name)
    with open(dump, "r+b") as handle:  # one bit flipped on the host's disk
        handle.seek(os.path.getsize(dump) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 1]))
    platform.sql("DELETE FROM orders WHERE id < 100")

    restore = run_playbook("restore_db", host_vars)
    assert "Set %s in %s is damaged (" % (set_id, backup_dir) in restore.stdout
    assert platform.snapshot() == db_before
    aside = os.listdir(os.path.join(backup_dir, ".damaged"))
    assert len(aside) == 1 and aside[0].startswith(set_id)
    assert sorted(os.listdir(os.path.join(backup_dir, ".damaged", aside[0]))) == [
        "manifest_%s.json" % set_id, "set_%s" % set_id]
    assert complete_set_ids(backup_dir) == [set_id]  # the bucket's copy, published in its place
    fetched, damaged = (file_contents(os.path.join(root, "set_%s" % set_id))[name]
                        for root in (backup_dir, os.path.join(backup_dir, ".damaged", aside[0])))
    assert [i for i, (a, b) in enumerate(zip(fetched, damaged, strict=True)) if a != b] == [
        len(damaged) // 2]
