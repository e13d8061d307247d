"""Metrics files (module_utils/platform/metrics.py) parsed back with Prometheus' own parser and checked by
promtool, and the webhook document and errors (module_utils/platform/notify.py)."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import threading

import pytest
import yaml
from conftest import PROMTOOL, ROOT
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import metrics, notify
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import add_rehearsal

RULES = os.path.join(ROOT, "files", "prometheus", "christmas-recovery.rules.yml")
NOW = 1795662000.0  # 2026-11-26 03:00:00 UTC


def parse(path):
    """{(name, frozenset(labels)): value} of a file, which promtool must accept; every family a gauge with HELP."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                          check=False).returncode == 0, text
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation == metrics.FAMILIES[family.name[len(metrics.PREFIX):]]
        samples.update({(s.name, frozenset(s.labels.items())): s.value for s in family.samples})
    return samples


def sample(samples, name, **labels):
    return samples.get((metrics.PREFIX + name, frozenset(labels.items())))


def one_line_error(call):
    with pytest.raises(RecoveryError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def test_run_file_has_the_values_and_keeps_the_last_success_through_a_failure(tmp_dir):
    textfile_dir = os.path.join(tmp_dir, "textfile")
    metrics.write_metrics(textfile_dir, "backup", True, duration=12.5, set_id="20261126_030000",
                          values={"set_bytes": "52428800", "pruned_sets": 2}, now=NOW)
    path = os.path.join(textfile_dir, "christmas_recovery_backup.prom")
    ok = parse(path)
    assert sample(ok, "last_run_success", kind="backup") == 1
    assert sample(ok, "last_run_timestamp_seconds", kind="backup") == NOW
    assert sample(ok, "last_success_timestamp_seconds", kind="backup") == NOW
    assert sample(ok, "last_run_duration_seconds", kind="backup") == 12.5
    assert sample(ok, "run_set_timestamp_seconds", kind="backup") == 1795662000
    assert sample(ok, "run_set_bytes", kind="backup") == 52428800
    assert sample(ok, "backup_pruned_sets", kind="backup") == 2
    assert not any(name.endswith("failure_info") for name, _labels in ok)

    drills = os.path.join(tmp_dir, "drills")
    metrics.write_metrics(drills, "drill", True, scenario="host_loss", set_id="pitr-20261126_030005", now=NOW)
    point = parse(os.path.join(drills, "christmas_recovery_drill_host_loss.prom"))
    assert sample(point, "run_set_timestamp_seconds", kind="drill", scenario="host_loss") == 1795662005

    metrics.write_metrics(textfile_dir, "backup", False, duration=1, reason='role "x" refused: port 5432', now=NOW + 60)
    failed = parse(path)
    assert sample(failed, "last_run_success", kind="backup") == 0
    assert sample(failed, "last_run_timestamp_seconds", kind="backup") == NOW + 60
    assert sample(failed, "last_success_timestamp_seconds", kind="backup") == NOW
    assert sample(failed, "last_run_failure_info", kind="backup", reason='role "x" refused: port 5432') == 1
    assert sample(failed, "run_set_bytes", kind="backup") is None
    assert sorted(os.listdir(textfile_dir)) == ["christmas_recovery_backup.prom"]
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_each_kind_and_drill_scenario_has_its_own_file(tmp_dir):
    for kind in ("backup", "verify", "rehearsal"):
        metrics.write_metrics(tmp_dir, kind, True, now=NOW)
    metrics.write_metrics(tmp_dir, "drill", True, scenario="db_lost", now=NOW,
                          values={"passed": False, "rto_seconds": 610.5, "rto_target_seconds": 900})
    metrics.write_metrics(tmp_dir, "drill", False, scenario="redis-flush", now=NOW)
    assert sorted(os.listdir(tmp_dir)) == [
        "christmas_recovery_backup.prom", "christmas_recovery_drill_db_lost.prom",
        "christmas_recovery_drill_redis-flush.prom", "christmas_recovery_rehearsal.prom",
        "christmas_recovery_verify.prom"]
    drill = parse(os.path.join(tmp_dir, "christmas_recovery_drill_db_lost.prom"))
    labels = {"kind": "drill", "scenario": "db_lost"}
    assert sample(drill, "drill_passed", **labels) == 0
    assert sample(drill, "drill_rto_seconds", **labels) == 610.5
    assert sample(drill, "drill_rto_target_seconds", **labels) == 900
    assert sample(parse(os.path.join(tmp_dir, "christmas_recovery_verify.prom")), "last_run_success",
                  kind="verify") == 1


def test_sets_file_counts_complete_sets_the_newest_proven_and_unreadable_manifests(tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    os.mkdir(backup_dir)
    for set_id in ("20261124_030000", "20261125_030000", "20261126_030000"):
        with open(os.path.join(backup_dir, "manifest_%s.json" % set_id), "w", encoding="utf-8") as handle:
            handle.write("{}")  # not a valid manifest: counted, but its bytes are unknown
    os.mkdir(os.path.join(backup_dir, ".set_20261126_040000.partial"))  # a running backup's set is not complete
    add_rehearsal(backup_dir, "20261125_030000", {"passed": True})
    add_rehearsal(backup_dir, "20261126_030000", {"passed": False})
    textfile_dir = os.path.join(tmp_dir, "textfile")
    metrics.write_metrics(textfile_dir, "verify", True, backup_dir=backup_dir, now=NOW + 3600)
    state = parse(os.path.join(textfile_dir, "christmas_recovery_sets.prom"))
    labels = {"backup_dir": backup_dir}
    assert sample(state, "complete_sets", **labels) == 3
    assert sample(state, "unreadable_sets", **labels) == 3
    assert sample(state, "newest_set_timestamp_seconds", **labels) == 1795662000
    assert sample(state, "newest_set_age_seconds", **labels) == 3600
    assert sample(state, "newest_proven_set_timestamp_seconds", **labels) == 1795662000 - 86400
    assert sample(state, "newest_proven_set_age_seconds", **labels) == 86400 + 3600
    assert sample(state, "newest_set_bytes", **labels) is None
    assert sample(state, "sets_bytes", **labels) == 0
    stats = os.statvfs(backup_dir)
    assert sample(state, "backup_fs_size_bytes", **labels) == stats.f_blocks * stats.f_frsize


def test_missing_backup_dir_has_no_sets_and_no_newest(tmp_dir):
    metrics.write_metrics(tmp_dir, "backup", False, backup_dir=os.path.join(tmp_dir, "none"), now=NOW)
    state = parse(os.path.join(tmp_dir, "christmas_recovery_sets.prom"))
    assert sample(state, "complete_sets", backup_dir=os.path.join(tmp_dir, "none")) == 0
    assert not any("newest" in name or "backup_fs" in name for name, _labels in state)


def test_replication_file_from_christmas_replication_replicas(tmp_dir):
    replicas = [
        {"application_name": "db2", "client_addr": "10.0.0.2", "state": "streaming", "lag_bytes": 0,
         "replay_lag_seconds": None},
        {"application_name": "db3", "client_addr": "10.0.0.3", "state": "catchup", "lag_bytes": 2048,
         "replay_lag_seconds": 4.25},
    ]
    metrics.write_metrics(tmp_dir, "backup", True, replication=replicas, now=NOW)
    state = parse(os.path.join(tmp_dir, "christmas_recovery_replication.prom"))
    assert sample(state, "replication_standbys") == 2
    assert sample(state, "replication_streaming", standby="db2") == 1
    assert sample(state, "replication_lag_seconds", standby="db2") == 0  # caught up: PostgreSQL shows no time
    assert sample(state, "replication_streaming", standby="db3") == 0
    assert sample(state, "replication_lag_bytes", standby="db3") == 2048
    assert sample(state, "replication_lag_seconds", standby="db3") == 4.25
    metrics.write_metrics(tmp_dir, "backup", True, replication=[], now=NOW)
    assert sample(parse(os.path.join(tmp_dir, "christmas_recovery_replication.prom")), "replication_standbys") == 0


def test_label_values_are_escaped_and_unsafe_reasons_left_out(tmp_dir):
    backup_dir = os.path.join(tmp_dir, 'odd "dir" \\ name')
    metrics.write_metrics(os.path.join(tmp_dir, "t"), "backup", False, backup_dir=backup_dir, now=NOW,
                          reason="webhook https://chat.example.com/hooks/TOKEN answered 500")
    assert sample(parse(os.path.join(tmp_dir, "t", "christmas_recovery_sets.prom")), "complete_sets",
                  backup_dir=backup_dir) == 0
    assert sample(parse(os.path.join(tmp_dir, "t", "christmas_recovery_backup.prom")), "last_run_failure_info",
                  kind="backup", reason="") == 1
    assert metrics.safe_reason("x" * 257) == "" and metrics.safe_reason("a\\b") == ""
    assert metrics.safe_reason("two\nlines") == "two lines"


def test_check_mode_writes_nothing_and_returns_the_content(tmp_dir):
    textfile_dir = os.path.join(tmp_dir, "textfile")
    result = metrics.write_metrics(textfile_dir, "backup", True, backup_dir=tmp_dir, check_mode=True, now=NOW)
    assert not os.path.exists(textfile_dir)
    assert result["created_dir"] and result["changed"]
    assert [os.path.basename(f["path"]) for f in result["files"]] == [
        "christmas_recovery_backup.prom", "christmas_recovery_sets.prom"]
    assert "christmas_recovery_last_run_success{kind=\"backup\"} 1\n" in result["files"][0]["content"]


def test_textfile_dir_made_0755_whatever_the_umask(tmp_dir):
    textfile_dir = os.path.join(tmp_dir, "a", "b")
    old = os.umask(0o077)
    try:
        metrics.write_metrics(textfile_dir, "verify", True, now=NOW)
    finally:
        os.umask(old)
    assert os.stat(os.path.join(tmp_dir, "a")).st_mode & 0o777 == 0o755
    assert os.stat(textfile_dir).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(textfile_dir, "christmas_recovery_verify.prom")).st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_dir, monkeypatch):
    metrics.write_metrics(tmp_dir, "backup", True, now=NOW)
    path = os.path.join(tmp_dir, "christmas_recovery_backup.prom")
    with open(path, encoding="utf-8") as handle:
        before = handle.read()

    def full_disk(_src, _dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.os, "rename", full_disk)
    message = one_line_error(lambda: metrics.write_metrics(tmp_dir, "backup", False, now=NOW + 1))
    assert message == "cannot write metrics into %s: No space left on device" % tmp_dir
    monkeypatch.undo()
    assert os.listdir(tmp_dir) == ["christmas_recovery_backup.prom"]
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == before


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_dir):
    stale = os.path.join(tmp_dir, ".christmas_recovery_abc.tmp")
    fresh = os.path.join(tmp_dir, ".christmas_recovery_def.tmp")
    for path in (stale, fresh):
        with open(path, "w", encoding="utf-8"):
            pass
    os.utime(stale, (NOW - 7200, NOW - 7200))
    os.utime(fresh, (NOW - 10, NOW - 10))
    metrics.write_metrics(tmp_dir, "backup", True, now=NOW)
    assert sorted(os.listdir(tmp_dir)) == [".christmas_recovery_def.tmp", "christmas_recovery_backup.prom"]


@pytest.mark.parametrize("kwargs, expected", [
    ({"values": {"set_bytes": float("nan")}}, "values.set_bytes must be a finite number, got nan"),
    ({"values": {"set_bytes": "inf"}}, "values.set_bytes must be a finite number, got 'inf'"),
    ({"values": {"set_bytes": "12 MB"}}, "values.set_bytes must be a number, got '12 MB'"),
    ({"values": {"set_bytes": [1]}}, "values.set_bytes must be a number, got list"),
    ({"values": {"rto_seconds": 1}}, "values: 'rto_seconds' is not a value of a backup run (one of pruned_sets, "
                                     "set_bytes)"),
    ({"values": {"bad name": 1}}, "values: 'bad name' is not a value of a backup run"),
    ({"kind": "drill"}, "a drill needs a scenario of letters, digits, _ and - (at most 64), got None"),
    ({"kind": "drill", "scenario": "../etc"}, "a drill needs a scenario of letters, digits, _ and - (at most 64)"),
    ({"scenario": "db_lost"}, "scenario is only for kind drill, not backup"),
    ({"kind": "restore"}, "kind must be one of backup, archive, upload, verify, rehearsal, drill, got 'restore'"),
    ({"set_id": "latest"}, "set_id must look like YYYYMMDD_HHMMSS (pitr-YYYYMMDD_HHMMSS for a point in time), got "
                           "'latest'"),
    ({"set_id": "pitr-latest"}, "set_id must look like YYYYMMDD_HHMMSS"),
    ({"duration": -1}, "duration_seconds must be 0 or more, got -1"),
    ({"duration": float("inf")}, "duration_seconds must be a finite number, got inf"),
    ({"replication": [{"state": "streaming"}]}, "replication[0] has no application_name or client_addr"),
    ({"replication": [{"application_name": "db2", "lag_bytes": "lots"}]},
     "replication[0].lag_bytes must be a number, got 'lots'"),
    ({"textfile_dir": "relative/dir"}, "textfile_dir must be an absolute path, got 'relative/dir'"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_dir, kwargs, expected):
    textfile_dir = kwargs.pop("textfile_dir", os.path.join(tmp_dir, "textfile"))
    kind = kwargs.pop("kind", "backup")
    message = one_line_error(lambda: metrics.write_metrics(textfile_dir, kind, True, **kwargs))
    assert message.startswith(expected)
    assert not os.path.exists(os.path.join(tmp_dir, "textfile"))


def test_textfile_dir_that_is_a_file_is_refused(tmp_dir):
    path = os.path.join(tmp_dir, "file")
    with open(path, "w", encoding="utf-8"):
        pass
    assert one_line_error(lambda: metrics.write_metrics(path, "backup", True)) == \
        "textfile_dir %s is not a directory" % path


# ---------------------------------------------------------------- the alert rules


def test_alert_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = os.path.join(ROOT, "files", "prometheus", "tests", "christmas-recovery.test.yml")
    run = subprocess.run([PROMTOOL, "test", "rules", tests], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_alert_rules_use_only_metrics_that_are_written():
    with open(RULES, encoding="utf-8") as handle:
        rules = yaml.safe_load(handle)["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"christmas_recovery_(\w+)", rule["expr"])}
    assert used and used <= set(metrics.FAMILIES)


# ---------------------------------------------------------------- webhooks


class Answering(http.server.ThreadingHTTPServer):
    """127.0.0.1 server answering every POST with ``status`` (and a Location for redirects)."""

    def __init__(self, status):
        server = self
        self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                server.bodies.append((self.headers.get("X-Token"),
                                      json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(status)
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.end_headers()

            def log_message(self, *_args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def answering():
    servers = []

    def start(status):
        server = Answering(status)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, "http://127.0.0.1:%d/hooks/SECRET?token=QSECRET" % server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_webhook_receives_the_document_and_headers(answering, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server, url = answering(204)
    result = notify.notify(url, "db1", "verify", "failed", reason="set 20261126_030000:\n checksum mismatch",
                           set_id="20261126_030000", headers={"X-Token": "abc"})
    assert result["sent"] and result["status_code"] == 204 and "SECRET" not in result["webhook"]
    assert server.bodies == [("abc", {
        "text": "christmas.recovery verify on db1 failed (set 20261126_030000): set 20261126_030000: checksum "
                "mismatch", "host": "db1", "what": "verify", "status": "failed",
        "reason": "set 20261126_030000: checksum mismatch", "set_id": "20261126_030000"})]


@pytest.mark.parametrize("status", [500, 302])
def test_webhook_errors_name_only_its_origin_and_redirects_are_not_followed(answering, monkeypatch, status):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server, url = answering(status)
    message = one_line_error(lambda: notify.notify(url, "db1", "backup", "failed"))
    assert message == "webhook http://127.0.0.1:%d answered %d" % (server.server_address[1], status)
    assert len(server.bodies) == 1


def test_webhook_that_does_not_answer_is_named_without_its_path(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = one_line_error(lambda: notify.post("http://127.0.0.1:%d/hooks/SECRET" % port, {}, timeout=2))
    assert message.startswith("webhook http://127.0.0.1:%d did not answer: " % port) and "SECRET" not in message


@pytest.mark.parametrize("url, headers, expected", [
    ("ftp://chat.example.com/hooks/SECRET", {}, "webhook ftp://chat.example.com: the URL must be http:// or https://"),
    ("https:///hooks/SECRET", {}, "webhook (URL without a host): the URL must be"),
    ("https://chat.example.com:99999/SECRET", {}, "webhook URL cannot be parsed"),
    ("https://chat.example.com/SECRET", {"Bad Name": "x"}, "webhook header name 'Bad Name' is not a valid"),
    ("https://chat.example.com/SECRET", {"X-Token": "SECRET\r\nX: y"}, "webhook header X-Token must be one line"),
])
def test_bad_webhook_settings_are_refused_without_showing_secrets(url, headers, expected):
    message = one_line_error(lambda: notify.notify(url, "db1", "backup", "failed", headers=headers, check_mode=True))
    assert message.startswith(expected) and "SECRET" not in message


def test_origin_keeps_scheme_host_and_port_only():
    assert notify.origin("https://user:pw@Chat.Example.com:8443/hooks/x?y=1#z") == "https://chat.example.com:8443"
    assert notify.origin("http://[::1]:8080/x") == "http://[::1]:8080"
