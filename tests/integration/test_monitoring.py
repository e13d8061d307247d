"""Metrics and notifications of backup.yml and verify_backup.yml: the .prom files against the backup directory
itself, and the webhook's POST as a local HTTP server receives it."""

from __future__ import annotations

import glob
import http.server
import json
import os
import re
import threading

import pytest
from conftest import connection_vars, read_metrics, run_module, seed_platform, value
from test_replication import build_standby, empty_standby, ready_primary

from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import set_time


def manifests(backup_dir):
    """Set id -> the manifest as written, newest first."""
    found = {}
    for path in sorted(glob.glob(os.path.join(backup_dir, "manifest_*.json")), reverse=True):
        with open(path, encoding="utf-8") as handle:
            found[re.search(r"manifest_(\d{8}_\d{6})\.json$", path).group(1)] = json.load(handle)
    return found


def set_bytes(manifest):
    return sum(artifact["size"] for artifact in manifest["artifacts"])


def test_backup_and_verify_metrics_match_the_backup_dir_and_a_failed_backup_is_recorded(
        run_playbook, platform, config_dir, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    metrics_dir = os.path.join(tmp_dir, "node-exporter", "textfile")  # missing: created
    host_vars = dict(connection_vars(platform, None, config_dir, backup_dir), christmas_metrics_dir=metrics_dir)
    skip = {"skip_redis": True}

    run_playbook("backup", host_vars, skip)
    run_playbook("backup", host_vars, skip)
    assert os.stat(metrics_dir).st_mode & 0o777 == 0o755
    sets = manifests(backup_dir)
    newest = next(iter(sets))
    metrics = read_metrics(metrics_dir)
    assert set(metrics) == {"christmas_recovery_backup.prom", "christmas_recovery_sets.prom",
                            "christmas_recovery_window.prom"}
    # No database server to manage here (no christmas_pg_data_dir): continuous protection is off, and says why.
    assert [v for (name, _labels), v in metrics["christmas_recovery_window.prom"].items()
            if name.endswith("pitr_enabled")] == [0]
    backup = metrics["christmas_recovery_backup.prom"]
    assert value(backup, "last_run_success", kind="backup") == 1
    assert value(backup, "run_set_timestamp_seconds", kind="backup") == set_time(newest)
    assert value(backup, "run_set_bytes", kind="backup") == set_bytes(sets[newest])
    assert value(backup, "last_success_timestamp_seconds", kind="backup") == \
        value(backup, "last_run_timestamp_seconds", kind="backup")
    assert 0 < value(backup, "last_run_duration_seconds", kind="backup") < 300
    state = metrics["christmas_recovery_sets.prom"]
    assert value(state, "complete_sets", backup_dir=backup_dir) == len(sets) == 2
    assert value(state, "newest_set_timestamp_seconds", backup_dir=backup_dir) == set_time(newest)
    assert value(state, "newest_set_bytes", backup_dir=backup_dir) == set_bytes(sets[newest])
    assert value(state, "sets_bytes", backup_dir=backup_dir) == sum(set_bytes(m) for m in sets.values())
    assert value(state, "unreadable_sets", backup_dir=backup_dir) == 0
    assert ("christmas_recovery_newest_proven_set_timestamp_seconds", frozenset({("backup_dir", backup_dir)})) \
        not in state  # no rehearsal has proven a set
    stats = os.statvfs(backup_dir)
    assert value(state, "backup_fs_size_bytes", backup_dir=backup_dir) == stats.f_blocks * stats.f_frsize
    assert value(state, "backup_fs_free_bytes", backup_dir=backup_dir) > 0

    with open(os.path.join(metrics_dir, "christmas_recovery_backup.prom"), encoding="utf-8") as handle:
        backup_file = handle.read()
    run_playbook("verify_backup", host_vars)
    metrics = read_metrics(metrics_dir)
    verify = metrics["christmas_recovery_verify.prom"]
    assert value(verify, "last_run_success", kind="verify") == 1
    assert value(verify, "run_set_timestamp_seconds", kind="verify") == set_time(newest)
    assert value(verify, "verify_artifacts", kind="verify") == len(sets[newest]["artifacts"])
    assert value(verify, "verify_deep", kind="verify") == 1
    with open(os.path.join(metrics_dir, "christmas_recovery_backup.prom"), encoding="utf-8") as handle:
        assert handle.read() == backup_file  # each kind of run has its own file

    failed = run_playbook("backup", dict(host_vars, christmas_db_admin_password="not-the-password"), skip,
                          expect_ok=False)
    message = failed.failure_message()
    assert "password" in message
    assert manifests(backup_dir).keys() == sets.keys()
    metrics = read_metrics(metrics_dir)
    backup = metrics["christmas_recovery_backup.prom"]
    assert value(backup, "last_run_success", kind="backup") == 0
    assert value(backup, "last_run_failure_info", kind="backup", reason=message) == 1
    assert value(backup, "last_success_timestamp_seconds", kind="backup") < \
        value(backup, "last_run_timestamp_seconds", kind="backup")
    assert ("christmas_recovery_run_set_timestamp_seconds", frozenset({("kind", "backup")})) not in backup
    assert value(metrics["christmas_recovery_sets.prom"], "complete_sets", backup_dir=backup_dir) == 2


class Webhook(http.server.ThreadingHTTPServer):
    """A chat webhook on 127.0.0.1: records each POST (path, JSON body) and answers ``status``."""

    def __init__(self):
        self.received, self.status = [], 200
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                length = int(self.headers["Content-Length"])
                webhook.received.append((self.path, self.headers["Content-Type"],
                                         json.loads(self.rfile.read(length))))
                self.send_response(webhook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def webhook():
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_failed_backup_is_posted_to_the_webhook_and_the_url_token_never_shows(run_playbook, webhook, tmp_dir):
    token = "T0KEN-7f3a9c-in-the-path"
    url = "http://127.0.0.1:%d/hooks/%s" % (webhook.server_address[1], token)
    host_vars = {"christmas_backup_dir": os.path.join(tmp_dir, "backups"), "christmas_notify_url": url,
                 "christmas_config_dir": os.path.join(tmp_dir, "no-such-config")}
    skip = {"skip_db": True, "skip_redis": True}
    no_proxy = {"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}

    failed = run_playbook("backup", host_vars, skip, expect_ok=False, env=no_proxy)
    message = failed.failure_message()
    assert "no-such-config" in message
    ((path, content_type, body),) = webhook.received
    assert path == "/hooks/" + token and content_type == "application/json"
    assert body == {"text": "christmas.recovery backup on platform failed: " + message, "host": "platform",
                    "what": "backup", "status": "failed", "reason": message, "set_id": ""}

    # A webhook and a metrics directory that fail while the backup fails: warnings, the webhook named only by its
    # origin, and the backup's own error.
    webhook.status = 500
    not_a_dir = os.path.join(tmp_dir, "a-file")
    with open(not_a_dir, "w", encoding="utf-8"):
        pass
    failed = run_playbook("backup", dict(host_vars, christmas_metrics_dir=not_a_dir), skip, expect_ok=False,
                          env=no_proxy, allow_warnings=("answered 500", "is not a directory"))
    assert failed.failure_message() == message
    assert "webhook http://127.0.0.1:%d answered 500" % webhook.server_address[1] in failed.output
    assert "textfile_dir %s is not a directory" % not_a_dir in failed.output

    verbose = run_playbook("backup", host_vars, skip, verbosity=3, expect_ok=False, env=no_proxy,
                           allow_warnings=("answered 500",))
    assert len(webhook.received) == 3 and webhook.received[2][2] == body
    assert "hooks" in webhook.received[2][0] and token not in failed.output + verbose.output


def test_success_is_posted_only_when_asked_and_a_broken_webhook_then_fails_the_play(
        run_playbook, webhook, config_dir, tmp_dir):
    url = "http://127.0.0.1:%d/hooks/secret-token" % webhook.server_address[1]
    host_vars = {"christmas_backup_dir": os.path.join(tmp_dir, "backups"), "christmas_notify_url": url,
                 "christmas_config_dir": config_dir}
    skip = {"skip_db": True, "skip_redis": True}
    no_proxy = {"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}

    run_playbook("backup", host_vars, skip, env=no_proxy)
    assert webhook.received == []
    run_playbook("backup", dict(host_vars, christmas_notify_on_success=True), skip, env=no_proxy)
    newest = next(iter(manifests(host_vars["christmas_backup_dir"])))
    assert webhook.received[0][2] == {"text": "christmas.recovery backup on platform succeeded (set %s)" % newest,
                                      "host": "platform", "what": "backup", "status": "succeeded", "reason": "",
                                      "set_id": newest}

    webhook.status = 404
    failed = run_playbook("backup", dict(host_vars, christmas_notify_on_success=True), skip, env=no_proxy,
                          expect_ok=False)
    assert failed.failure_message() == "webhook http://127.0.0.1:%d answered 404" % webhook.server_address[1]
    assert "secret-token" not in failed.output


def test_backup_of_an_ha_pair_records_the_standbys_replication_lag(run_playbook, make_cluster, tmp_dir):
    primary, password = ready_primary(make_cluster)
    platform = seed_platform(primary)
    build_standby(primary, empty_standby(make_cluster), password)
    backup_dir, metrics_dir = os.path.join(tmp_dir, "backups"), os.path.join(tmp_dir, "metrics")
    # A one-host "pair": the host itself is the database host the role asks, on loopback.
    host_vars = dict(connection_vars(platform, None, None, backup_dir), christmas_metrics_dir=metrics_dir,
                     christmas_ha_hosts=["platform"], christmas_ha_address="127.0.0.1")
    run_playbook("backup", host_vars, {"skip_redis": True, "skip_config": True})

    lag = read_metrics(metrics_dir)["christmas_recovery_replication.prom"]
    ((name, state),) = primary.sql("SELECT application_name, state FROM pg_stat_replication")
    assert (name, state) == ("db2", "streaming")
    assert value(lag, "replication_standbys") == 1
    assert value(lag, "replication_streaming", standby="db2") == 1
    assert 0 <= value(lag, "replication_lag_bytes", standby="db2") < 64 * 1024 * 1024


def test_metrics_module_check_mode_predicts_and_writes_nothing_and_can_only_warn(tmp_dir):
    textfile_dir = os.path.join(tmp_dir, "textfile")
    args = {"textfile_dir": textfile_dir, "kind": "drill", "scenario": "db_lost", "success": True,
            "duration_seconds": 3.5, "values": {"passed": True, "rto_seconds": 610, "rto_target_seconds": 900}}
    dry, _ = run_module(tmp_dir, "christmas_metrics", args, check=True)
    assert dry["changed"] and dry["created_dir"] and not os.path.exists(textfile_dir)
    (predicted,) = [f for f in dry["files"] if f["path"] == textfile_dir + "/christmas_recovery_drill_db_lost.prom"]
    assert "christmas_recovery_drill_rto_seconds{kind=\"drill\",scenario=\"db_lost\"} 610\n" in predicted["content"]

    run_module(tmp_dir, "christmas_metrics", args)
    drill = read_metrics(textfile_dir)["christmas_recovery_drill_db_lost.prom"]
    assert value(drill, "drill_rto_seconds", kind="drill", scenario="db_lost") == 610
    assert value(drill, "drill_passed", kind="drill", scenario="db_lost") == 1

    bad = dict(args, values={"rto_seconds": "nan"})
    failed, _ = run_module(tmp_dir, "christmas_metrics", bad)
    assert failed["failed"] and failed["msg"] == "values.rto_seconds must be a finite number, got 'nan'"
    warned, output = run_module(tmp_dir, "christmas_metrics", dict(bad, fail_on_error=False),
                                allow_warnings=(failed["msg"],))
    assert not warned.get("failed") and warned["error"] == failed["msg"]
    assert "[WARNING]: " + failed["msg"] in output
    assert value(read_metrics(textfile_dir)["christmas_recovery_drill_db_lost.prom"], "drill_rto_seconds",
                 kind="drill", scenario="db_lost") == 610


def test_notify_module_check_mode_sends_nothing(tmp_dir, webhook):
    url = "http://127.0.0.1:%d/hooks/secret" % webhook.server_address[1]
    args = {"url": url, "host": "db1", "what": "verify", "status": "succeeded", "set_id": "20261126_030000"}
    dry, _ = run_module(tmp_dir, "christmas_notify", args, check=True)
    assert not dry["sent"] and webhook.received == []
    assert dry["document"]["text"] == "christmas.recovery verify on db1 succeeded (set 20261126_030000)"
    sent, output = run_module(tmp_dir, "christmas_notify", args)
    assert sent["sent"] and sent["status_code"] == 200 and webhook.received[0][2] == dry["document"]
    assert "/hooks/secret" not in output + json.dumps(sent)
