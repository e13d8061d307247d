"""Replication, then a planned switchover with failover.yml (after test_ha.py measured the virtual IP's own move):
the new primary takes writes through the virtual IP, the old one is its read-only standby, and a backup taken now
names its node and timeline and restores correctly, the restore replayed on the standby. Then the new primary
crashes: an unplanned failover promotes the standby and fences the dead primary, which a rebuild makes a standby.
The figures are printed and written to $MOLECULE_EPHEMERAL_DIRECTORY/ha_switchover.json (docs/ha.md quotes them)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

testinfra_hosts = ["client"]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
VIP = "10.77.104.100"


@pytest.fixture(scope="module")
def figures():
    return {}


def _report(figures, capsys):
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ha_switchover.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=1, sort_keys=True)
    with capsys.disabled():
        print("\nha_switchover %s: %s" % (path, json.dumps(figures, sort_keys=True)))


def _sql(host, hostvars, statement, address="127.0.0.1"):
    done = host.run("PGPASSWORD=%s psql -h %s -U postgres -d christmas -Atqc %s",
                    hostvars["christmas_db_admin_password"], address, statement)
    return done.rc, done.stdout.strip(), done.stderr.strip()


def _playbook(request, name, *extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"))
    config = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg")
    if os.path.exists(config):
        env["ANSIBLE_CONFIG"] = config
    started = time.monotonic()
    done = subprocess.run(["ansible-playbook", "-i", request.config.option.ansible_inventory,
                           os.path.join(ROOT, "playbooks", name), *extra], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    request.getfixturevalue("no_warnings")(done.stdout + done.stderr)
    return time.monotonic() - started, done.stdout


def _wait(check, timeout=30.0):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError("not within %s s" % timeout)


def _has_vip(host):
    return VIP in host.check_output("ip -4 -o addr show")


def test_a_row_written_through_the_virtual_ip_reaches_the_standby(host, db1, db2, hostvars, figures):
    assert _sql(db2, hostvars, "SELECT pg_is_in_recovery()")[1] == "t"
    assert _sql(db2, hostvars, "SELECT status FROM pg_stat_wal_receiver")[1] == "streaming"
    marker = "replicated-%d" % time.time_ns()
    rc, _out, err = _sql(host, hostvars, "INSERT INTO positions VALUES ('%s', 1, now())" % marker, VIP)
    assert rc == 0, err
    figures["replication_seconds"] = round(_wait(lambda: _sql(
        db2, hostvars, "SELECT count(*) FROM positions WHERE symbol = '%s'" % marker)[1] == "1", 10), 3)
    assert _sql(db1, hostvars, "SELECT count(*) FROM positions WHERE symbol = '%s'" % marker)[1] == "1"
    # A burst: 200,000 market ticks in one transaction, the standby's lag right after the commit, and until caught up.
    rc, _out, err = _sql(host, hostvars, "CREATE TABLE lag_probe AS SELECT i, md5(i::text) AS payload "
                                         "FROM generate_series(1, 200000) AS i", VIP)
    assert rc == 0, err
    committed = time.monotonic()
    figures["burst_lag_bytes_after_commit"] = int(_sql(db1, hostvars, "SELECT coalesce(max(pg_wal_lsn_diff("
                                                         "pg_current_wal_lsn(), replay_lsn)), 0) "
                                                         "FROM pg_stat_replication")[1])
    _wait(lambda: _sql(db2, hostvars, "SELECT count(*) FROM lag_probe")[0] == 0, 30)
    figures["burst_caught_up_seconds"] = round(time.monotonic() - committed, 3)
    assert _sql(db2, hostvars, "SELECT count(*) FROM lag_probe")[1] == "200000"
    assert _sql(host, hostvars, "DROP TABLE lag_probe", VIP)[0] == 0
    rc, _out, err = _sql(db2, hostvars, "INSERT INTO positions VALUES ('not-on-a-standby', 1, now())")
    assert rc != 0 and "read-only" in err


def test_after_a_switchover_the_new_primary_takes_writes_and_the_old_one_is_its_standby(
        request, host, db1, db2, hostvars, figures):
    figures["switchover_playbook_seconds"], _out = _playbook(request, "failover.yml")
    assert _sql(db2, hostvars, "SELECT pg_is_in_recovery()")[1] == "f"
    assert _sql(db1, hostvars, "SELECT pg_is_in_recovery()")[1] == "t"
    figures["vip_on_new_primary_seconds"] = round(_wait(lambda: _has_vip(db2) and not _has_vip(db1), 30), 3)
    rc, _out, err = _sql(host, hostvars, "INSERT INTO positions VALUES ('after-switchover', 1, now())", VIP)
    assert rc == 0, err
    _wait(lambda: _sql(db1, hostvars, "SELECT count(*) FROM positions WHERE symbol = 'after-switchover'")[1] == "1")
    rc, _out, err = _sql(db1, hostvars, "INSERT INTO positions VALUES ('old-primary', 1, now())")
    assert rc != 0 and "read-only" in err


def test_a_backup_taken_now_follows_the_new_primary_and_restores(request, host, db1, db2, hostvars, figures):
    seconds, _out = _playbook(request, "backup.yml", "-e", "skip_redis=true", "-e", "skip_config=true")
    figures["backup_seconds"] = round(seconds, 3)
    manifest = json.loads(host.check_output("cat $(ls -1 /var/backups/christmas/manifest_*.json | tail -n 1)"))
    assert manifest["db"]["node"]["name"] == "db2"
    assert manifest["db"]["timeline"] >= 2 and manifest["db"]["from_standby"] is False
    before = _sql(host, hostvars, "SELECT count(*) FROM market_data", VIP)[1]
    assert _sql(host, hostvars, "DELETE FROM market_data", VIP)[0] == 0

    seconds, _out = _playbook(request, "restore_db.yml", "-e", "manifest=latest")

    figures["restore_seconds"] = round(seconds, 3)
    assert _sql(db2, hostvars, "SELECT count(*) FROM market_data")[1] == before
    assert _sql(db1, hostvars, "SELECT count(*) FROM market_data")[1] == before  # replayed on the standby


def test_an_unplanned_failover_fences_the_dead_primary_and_a_rebuild_brings_it_back_as_standby(
        request, host, db1, db2, hostvars, figures, capsys):
    db2.check_output("pg_ctlcluster 15 main stop -- -m immediate")  # the primary crashes

    figures["failover_playbook_seconds"], _out = _playbook(request, "failover.yml", "-e", "mode=failover")

    assert _sql(db1, hostvars, "SELECT pg_is_in_recovery()")[1] == "f"
    figures["vip_on_promoted_standby_seconds"] = round(_wait(lambda: _has_vip(db1) and not _has_vip(db2), 30), 3)
    rc, _out, err = _sql(host, hostvars, "INSERT INTO positions VALUES ('after-failover', 1, now())", VIP)
    assert rc == 0, err
    assert db2.file("/etc/postgresql/15/main/start.conf").content_string.split()[-1] == "manual"  # fenced
    assert db2.run("pg_lsclusters -h").stdout.split()[3] == "down"

    figures["rebuild_playbook_seconds"], _out = _playbook(request, "ha_replica.yml", "-e",
                                                          "christmas_replica_rebuild=true")

    assert _sql(db2, hostvars, "SELECT status FROM pg_stat_wal_receiver")[1] == "streaming"
    assert db2.file("/etc/postgresql/15/main/start.conf").content_string.split()[-1] == "auto"
    _wait(lambda: _sql(db2, hostvars, "SELECT count(*) FROM positions WHERE symbol = 'after-failover'")[1] == "1")
    _report(figures, capsys)
