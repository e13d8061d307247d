"""After keepalived.yml: the virtual IP is on the designated primary (db1) only and the client reaches PostgreSQL
through it; when PostgreSQL stops on db1 the VIP moves to db2, whose PostgreSQL answers, and comes back to db1 when it
runs again (measured, written to $MOLECULE_EPHEMERAL_DIRECTORY/ha_timings.json and printed). When db1 comes back in
recovery, as after a failover, db2 keeps the VIP. Every test leaves db1 a running primary holding the VIP."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

testinfra_hosts = ["client"]

POLL_SECONDS = 0.2
MOVE_LIMIT_SECONDS = 30
CHECK_SCRIPT = "/usr/local/bin/christmas-db-check"
CONFIG = "/etc/keepalived/keepalived.conf"
# The platform's database, on the primary and (replicated) on the standby.
PLATFORM_DB_COUNT = "SELECT count(*) FROM pg_database WHERE datname = 'christmas'"


@pytest.fixture(scope="module")
def settings(inventory):
    return inventory.get_variables("db1")


@pytest.fixture(scope="module")
def vip(settings):
    return settings["christmas_keepalived_vip"].split("/")[0]


def _holds(host, vip):
    addresses = host.check_output("ip -4 -o addr show dev eth0")
    return re.search(r"\binet %s/" % re.escape(vip), addresses) is not None


def _vrrp_states(*hosts):
    """Each host's VRRP state and priority as keepalived reports them (SIGUSR1 dumps them): for failure messages."""
    states = {}
    for db in hosts:
        dump = db.run("pkill --signal USR1 --pidfile /run/keepalived.pid keepalived && sleep 0.5 && "
                      "grep -E 'State = (INIT|BACKUP|MASTER|FAULT|STOP)|Effective priority =' /tmp/keepalived.data")
        states[db.backend.hostname] = " ".join(dump.stdout.split()) or dump.stderr
    return states


def _seconds_until(condition, limit=MOVE_LIMIT_SECONDS, start=None):
    """Seconds from start (default now) until condition() is true, polled every POLL_SECONDS; None after limit."""
    start = time.monotonic() if start is None else start
    while True:
        if condition():
            return round(time.monotonic() - start, 2)
        if time.monotonic() - start > limit:
            return None
        time.sleep(POLL_SECONDS)


def _query(host, vip, settings, sql):
    """The first column of the first row of sql, run by the client through the virtual IP with the admin's password."""
    result = host.run("PGPASSWORD=%s PGCONNECT_TIMEOUT=3 psql -X -A -t -q -h %s -U postgres -d postgres -c %s",
                      settings["christmas_db_admin_password"], vip, sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def test_the_configuration_is_valid_and_the_password_file_private(db1, db2):
    for db in (db1, db2):
        config = db.file(CONFIG)
        assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
        assert db.run("keepalived -t -f %s", CONFIG).rc == 0
        script = db.file(CHECK_SCRIPT)
        assert (script.user, script.group, script.mode) == ("root", "root", 0o755)


def test_priorities_favour_the_designated_primary(db1, db2):
    assert re.search(r"^\s*priority 101$", db1.file(CONFIG).content_string, re.MULTILINE)
    assert re.search(r"^\s*priority 100$", db2.file(CONFIG).content_string, re.MULTILINE)


def test_the_check_passes_on_both_healthy_hosts_in_a_clean_environment(db1, db2):
    # keepalived runs the script with an empty environment: Debian's /usr/bin wrappers would fail there.
    for db in (db1, db2):
        result = db.run("env -i %s", CHECK_SCRIPT)
        assert result.rc == 0, result.stdout + result.stderr


def test_the_virtual_ip_is_on_the_designated_primary_only(db1, db2, vip):
    assert _seconds_until(lambda: _holds(db1, vip) and not _holds(db2, vip), limit=15) is not None, \
        _vrrp_states(db1, db2)


def test_the_client_reaches_the_primary_through_the_virtual_ip(connects, host, vip, settings):
    assert connects(vip, 5432)
    assert _query(host, vip, settings, "SELECT pg_is_in_recovery()") == "f"
    assert _query(host, vip, settings, PLATFORM_DB_COUNT) == "1"


def test_the_virtual_ip_follows_a_healthy_postgresql_and_comes_back(db1, db2, host, vip, settings, capsys):
    timings = {"poll_interval_s": POLL_SECONDS}
    try:
        started = time.monotonic()
        db1.check_output("pg_ctlcluster 15 main stop")
        stopped = time.monotonic()
        timings["postgresql_stop_s"] = round(stopped - started, 2)
        timings["vip_on_standby_after_stop_s"] = _seconds_until(lambda: _holds(db2, vip), start=stopped)
        assert timings["vip_on_standby_after_stop_s"] is not None, _vrrp_states(db1, db2)
        timings["vip_gone_from_primary_after_stop_s"] = _seconds_until(lambda: not _holds(db1, vip), start=stopped)
        assert timings["vip_gone_from_primary_after_stop_s"] is not None, _vrrp_states(db1, db2)
        # Through the VIP the client now reaches db2: the hot standby, readable, not yet promoted (failover.yml).
        assert _query(host, vip, settings, "SELECT pg_is_in_recovery()") == "t"
        assert _query(host, vip, settings, PLATFORM_DB_COUNT) == "1"
    finally:
        started = time.monotonic()
        db1.run("pg_ctlcluster 15 main start")
        running = time.monotonic()
    timings["postgresql_start_s"] = round(running - started, 2)
    timings["vip_back_on_primary_after_start_s"] = _seconds_until(lambda: _holds(db1, vip), start=running)
    timings["vip_gone_from_standby_after_start_s"] = _seconds_until(lambda: not _holds(db2, vip), start=running)

    path = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."), "ha_timings.json")
    with open(path, "w", encoding="utf-8") as output:
        json.dump(timings, output, indent=2)
    with capsys.disabled():
        print("\nha_timings %s: %s" % (path, json.dumps(timings)))

    assert timings["vip_back_on_primary_after_start_s"] is not None, _vrrp_states(db1, db2)
    assert timings["vip_gone_from_standby_after_start_s"] is not None, _vrrp_states(db1, db2)
    assert _query(host, vip, settings, "SELECT pg_is_in_recovery()") == "f"
    assert _query(host, vip, settings, PLATFORM_DB_COUNT) == "1"


def test_the_designated_primary_back_as_a_standby_leaves_the_virtual_ip_to_the_other(db1, db2, host, vip, settings):
    # As after a failover: db1's PostgreSQL runs again, but in recovery. Its check must fail, so db2 keeps the VIP.
    standby_signal = "/var/lib/postgresql/15/main/standby.signal"
    try:
        db1.check_output("pg_ctlcluster 15 main stop")
        db1.check_output("install -o postgres -g postgres -m 0600 /dev/null %s", standby_signal)
        db1.check_output("pg_ctlcluster 15 main start")
        assert db1.run("env -i %s", CHECK_SCRIPT).rc != 0
        assert db2.run("env -i %s", CHECK_SCRIPT).rc == 0
        assert _seconds_until(lambda: _holds(db2, vip) and not _holds(db1, vip)) is not None, _vrrp_states(db1, db2)
        # Longer than rise x interval plus VRRP's master-down time: db1 would have taken it back by now.
        time.sleep(8)
        assert _holds(db2, vip) and not _holds(db1, vip), _vrrp_states(db1, db2)
    finally:
        db1.run("pg_ctlcluster 15 main stop")
        db1.run("rm -f %s", standby_signal)
        db1.run("pg_ctlcluster 15 main start")
    assert _seconds_until(lambda: _holds(db1, vip) and not _holds(db2, vip)) is not None, _vrrp_states(db1, db2)
    assert _query(host, vip, settings, "SELECT pg_is_in_recovery()") == "f"
