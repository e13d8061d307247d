"""Pure functions of module_utils/db/replication.py: settings to change, SCRAM verifiers, conninfo and config quoting,
start.conf, and how a standby's state is judged."""

from __future__ import annotations

import base64
import datetime

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, replication_conf

# Verifiers PostgreSQL 15 itself stored for these passwords (CREATE ROLE ... PASSWORD on a sandbox cluster).
SERVER_VERIFIERS = {
    "correct horse": "SCRAM-SHA-256$4096:mht5W61kVwgcE4Cp+gXjeg==$Ymv9WO6IaVSRyqzUBGam7IwE0yhskblvYM1NRoVwNWM=:"
                     "/tBK8Nrl9zc6xo9jqq5JePE3t8Er1AoP2COWgGkP2dg=",
    # soft hyphen (removed), no-break space (mapped to a space), roman numeral nine (NFKC: IX)
    "p\u00e4ss\u00adw\u00f6rd\u00a0\u2168": "SCRAM-SHA-256$4096:1SQpwAcLMeKnb0Jpo+qKBw==$"
                                            "Npnx8aUl25SZxMm+EnxJmUOEON48Q3TiE28yJaaSBk8=:"
                                            "tJqvpuzyBXdsL2rVsnRPjzeUxTZgp3ERrvQqLreVJzA=",
}


@pytest.mark.parametrize("password", sorted(SERVER_VERIFIERS))
def test_password_matches_the_servers_own_scram_verifier(password):
    assert replication_conf.password_matches(password, SERVER_VERIFIERS[password], "u0")
    assert not replication_conf.password_matches(password + "x", SERVER_VERIFIERS[password], "u0")


@pytest.mark.parametrize("password", sorted(SERVER_VERIFIERS))
def test_our_verifier_with_the_servers_salt_is_the_servers_verifier(password):
    salt = SERVER_VERIFIERS[password].split("$")[1].split(":")[1]
    assert replication_conf.scram_verifier(password, salt=base64.b64decode(salt)) == SERVER_VERIFIERS[password]


def test_fresh_verifiers_are_salted_and_verify():
    first, second = replication_conf.scram_verifier("s3cret"), replication_conf.scram_verifier("s3cret")
    assert first != second and "s3cret" not in first
    assert replication_conf.password_matches("s3cret", first, "any")
    assert replication_conf.password_matches("s3cret", second, "x")


def test_md5_password_and_missing_or_garbled_ones():
    assert replication_conf.password_matches("md5-me", "md58153de880125e3df0c6a41012fcb2717", "u2")
    assert not replication_conf.password_matches("md5-me", "md58153de880125e3df0c6a41012fcb2717", "other")
    assert not replication_conf.password_matches("x", None, "u")
    assert not replication_conf.password_matches("x", "SCRAM-SHA-256$4096:!!$a:b", "u")


def test_saslprep_keeps_ascii_and_prohibited_strings_as_they_are():
    assert replication_conf.saslprep("plain ascii\t") == "plain ascii\t"
    assert replication_conf.saslprep("a\u00adb\u00a0\u2168") == "ab IX"
    assert replication_conf.saslprep("bad\u0007\u00e9") == "bad\u0007\u00e9"  # a control character: used unchanged


def _row(setting, source="default", file_value=None, boot_val=None):
    return {"setting": setting, "source": source, "file_value": file_value,
            "boot_val": boot_val if boot_val is not None else setting, "context": "postmaster",
            "pending_restart": False}


def test_settings_to_change_looks_at_the_value_after_a_restart():
    wanted = replication_conf.wanted_settings(10, 10, "*")
    current = {
        "wal_level": _row("minimal", "configuration file", file_value="replica"),  # pending: already done
        "max_wal_senders": _row("10", "configuration file", file_value="0"),  # running fine, a restart breaks it
        "max_replication_slots": _row("10"),
        "hot_standby": _row("on", "configuration file", file_value="true"),
        "listen_addresses": _row("localhost", boot_val="localhost"),
    }
    assert replication_conf.settings_to_change(wanted, current) == ["max_wal_senders", "listen_addresses"]


def test_wal_level_logical_is_never_downgraded_and_command_line_values_refused():
    wanted = replication_conf.wanted_settings(10, 10, "*")
    current = {name: _row(value) for name, value in wanted.items()}
    current["wal_level"] = _row("logical", "configuration file", file_value="logical")
    assert replication_conf.settings_to_change(wanted, current) == []
    current["listen_addresses"] = _row("127.0.0.1", "command line")
    with pytest.raises(RecoveryError, match="^listen_addresses is set on the server's command line"):
        replication_conf.settings_to_change(wanted, current)
    assert replication_conf.settings_to_change(dict(wanted, listen_addresses="127.0.0.1"), current) == []


@pytest.mark.parametrize("name", ["db2", "standby_1", "a" * 63])
def test_valid_slot_names(name):
    assert replication_conf.check_slot_name(name) == name


@pytest.mark.parametrize("name", ["", "DB2", "db-2", "a" * 64, "x'; DROP", None])
def test_invalid_slot_names_fail_in_one_line(name):
    with pytest.raises(RecoveryError, match="^replication slot name .* is invalid"):
        replication_conf.check_slot_name(name)


def test_conninfo_round_trips_quotes_backslashes_and_spaces():
    params = {"host": "10.0.0.1", "port": "5432", "user": "replicator", "password": "a b'c\\d:e",
              "application_name": "db2"}
    assert replication_conf.parse_conninfo(replication_conf.conninfo(params)) == params
    assert replication_conf.parse_conninfo("host=h port=5 password='x\\'y'") == {"host": "h", "port": "5",
                                                                            "password": "x'y"}


def test_auto_conf_value_replaced_and_read_back_as_alter_system_writes_it():
    text = "# Do not edit this file manually!\nprimary_slot_name = 'db2'\nprimary_conninfo = 'old'\n"
    value = "user='replicator' password='it''s \\ here'"
    updated = replication_conf.set_auto_conf(text, "primary_conninfo", value)
    assert updated.count("primary_conninfo") == 1 and "primary_slot_name = 'db2'" in updated
    assert replication_conf.read_auto_conf(updated, "primary_conninfo") == value
    assert replication_conf.read_auto_conf(updated, "primary_slot_name") == "db2"
    assert replication_conf.read_auto_conf(text, "missing") is None


def test_pgpass_line_escapes_colons_and_backslashes_and_refuses_line_breaks():
    assert connection.pgpass_line("a:b\\c", "u") == "*:*:*:*:a\\:b\\\\c\n"
    for password in ("one\ntwo", "one\rtwo", "nul\x00"):
        with pytest.raises(RecoveryError) as err:
            connection.pgpass_line(password, "replicator")
        assert "PostgreSQL user replicator holds a line break or NUL" in str(err.value)
        assert password not in str(err.value)


def test_start_conf_fenced_keeps_comments():
    debian = "# Automatic startup configuration\n#   auto: start\n\nauto\n"
    assert replication_conf.start_conf_value(debian) == "auto"
    fenced = replication_conf.fenced_start_conf(debian)
    assert fenced == "# Automatic startup configuration\n#   auto: start\n\nmanual\n"
    assert replication_conf.start_conf_value(fenced) == "manual"
    assert replication_conf.fenced_start_conf(None) == "manual\n" and replication_conf.start_conf_value(None) is None


def test_rebuild_stamp_is_utc():
    moment = datetime.datetime(2026, 12, 24, 23, 5, 9, tzinfo=datetime.UTC)
    assert replication_conf.rebuild_stamp(moment) == "20261224T230509Z"


STREAMING = {"role": "standby", "in_recovery": True,
             "wal_receiver": {"status": "streaming", "sender_host": "10.0.0.1", "sender_port": 5432,
                              "slot_name": "db2", "latest_end_lsn": "0/3000000"}}


@pytest.mark.parametrize(("state", "problem"), [
    (STREAMING, None),
    ({"role": "down", "in_recovery": None, "error": "refused"}, "is down (refused)"),
    ({"role": "primary", "in_recovery": False}, "is a primary (not in recovery)"),
    (dict(STREAMING, wal_receiver=None), "is not streaming from 10.0.0.1:5432 (wal receiver: none)"),
    (dict(STREAMING, wal_receiver=dict(STREAMING["wal_receiver"], status="stopping")),
     "is not streaming from 10.0.0.1:5432 (wal receiver: stopping)"),
    (dict(STREAMING, wal_receiver=dict(STREAMING["wal_receiver"], sender_port=5433)),
     "streams from 10.0.0.1:5433, not from 10.0.0.1:5432"),
    (dict(STREAMING, wal_receiver=dict(STREAMING["wal_receiver"], sender_host="10.0.0.9")),
     "streams from 10.0.0.9:5432, not from 10.0.0.1:5432"),
    (dict(STREAMING, wal_receiver=dict(STREAMING["wal_receiver"], slot_name=None)),
     "streams through slot none, not db2"),
])
def test_standby_problem_names_what_is_wrong(state, problem):
    assert replication_conf.standby_problem(state, "10.0.0.1", 5432, "db2") == problem


def test_standby_without_a_slot_option_accepts_any_slot_and_hosts_compare_by_address():
    state = dict(STREAMING, wal_receiver=dict(STREAMING["wal_receiver"], sender_host="127.0.0.1", slot_name="x"))
    assert replication_conf.standby_problem(state, "localhost", 5432, None, replication_conf.same_host) is None
    assert replication_conf.same_host("127.0.0.1", "127.0.0.1") and not replication_conf.same_host(None, "x")
