"""Pure parts of wal/: pgBackRest's info JSON and verify report, pg_waldump lines, timeline history files, WAL
segment names, restore targets, config text and archiving settings."""

from __future__ import annotations

import datetime
import json
import os
import pwd

import pytest
from faults.fault_helpers import copy_set, set_id_days_ago

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.sets import proof
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import Protection
from ansible_collections.christmas.recovery.plugins.module_utils.wal import archiving, pgbackrest, pgbackrest_text, pitr

UTC = datetime.UTC

VERIFY_OK = """\
stanza: main
status: ok
  archiveId: 15-1, total WAL checked: 8, total valid WAL: 8
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261207-024347F, status: valid, total files checked: 964, total valid files: 964
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
"""

VERIFY_CORRUPT = """\
2026-12-07 02:36:37.634 P00   INFO: verify command begin 2.45: --config=/x/pgbackrest.conf --stanza=main
2026-12-07 02:36:37.690 P01   INFO: invalid checksum '15-1/0000000100000000/000000010000000000000006-3a5505cf635ce4bc1c0bdaa572cd1ddc344b31c9.gz'
2026-12-07 02:36:37.801 P01   INFO: invalid checksum '20261207-023626F/pg_data/base/1/1249_vm.gz'
2026-12-07 02:44:28.187 P02   INFO: invalid result 15-1/0000000100000000/000000010000000000000002-f6d9420aa6dd0fc8642a12c03e94dcdacfecbfbe.gz: [29] raised from local-2 protocol: zlib threw error: [-3] data error
stanza: main
status: error
  archiveId: 15-1, total WAL checked: 5, total valid WAL: 3
    missing: 0, checksum invalid: 2, size invalid: 0, other: 1
2026-12-07 02:36:38.009 P00   INFO: verify command end: completed successfully (376ms)
"""  # noqa: E501 - pgBackRest's lines as printed

INFO = [{
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1", "max": "000000010000000000000005",
                 "min": "000000010000000000000001"}],
    "backup": [{"archive": {"start": "000000010000000000000002", "stop": "000000010000000000000003"},
                "database": {"id": 1, "repo-key": 1}, "error": False,
                "info": {"delta": 100, "repository": {"delta": 40, "size": 40}, "size": 100},
                "label": "20261207-023535F", "lsn": {"start": "0/2000028", "stop": "0/3000050"}, "prior": None,
                "timestamp": {"start": 1796610935, "stop": 1796610939}, "type": "full"}],
    "cipher": "aes-256-cbc", "db": [{"id": 1, "system-id": 7, "version": "15"}], "name": "main",
    "status": {"code": 0, "message": "ok"},
}]

WALDUMP = """\
rmgr: Transaction len (rec/tot):    162/   162, tx:        738, lsn: 0/0B03A7F0, prev 0/0B03A7B0, desc: COMMIT 2026-12-07 02:37:02.756015 UTC; inval msgs: catcache 63
rmgr: Transaction len (rec/tot):     34/    34, tx:        739, lsn: 0/0B0405C8, prev 0/0B040590, desc: COMMIT 2026-12-07 02:38:03.441767 UTC
"""  # noqa: E501


def test_verify_report_ok_has_no_problems():
    assert pgbackrest_text.verify_problems(VERIFY_OK) == ([], [])


def test_verify_report_names_every_damaged_file_and_the_error_status():
    files, bad = pgbackrest_text.verify_problems(VERIFY_CORRUPT)
    assert bad == ["error"]
    assert files == [
        "15-1/0000000100000000/000000010000000000000006-3a5505cf635ce4bc1c0bdaa572cd1ddc344b31c9.gz (invalid checksum)",
        "20261207-023626F/pg_data/base/1/1249_vm.gz (invalid checksum)",
        "15-1/0000000100000000/000000010000000000000002-f6d9420aa6dd0fc8642a12c03e94dcdacfecbfbe.gz (invalid result)",
    ]


def test_verify_report_without_a_status_is_a_problem():
    assert pgbackrest_text.verify_problems("INFO: verify command end: completed successfully\n")[1] == [
        "no status reported"]


def test_info_json_gives_backups_with_utc_times_and_archive_ranges():
    info = pgbackrest_text.parse_info(json.dumps(INFO), "main")
    backup = info["backups"][0]
    assert backup["label"] == "20261207-023535F" and backup["type"] == "full"
    assert (backup["archive_start"], backup["archive_stop"]) == ("000000010000000000000002",
                                                                 "000000010000000000000003")
    assert backup["stop_time"] == "2026-12-07T02:35:39+00:00"
    assert (backup["size"], backup["repo_size"]) == (100, 40)
    assert info["archives"] == [{"id": "15-1", "db_id": 1, "min": "000000010000000000000001",
                                 "max": "000000010000000000000005"}]
    with pytest.raises(RecoveryError, match="does not list stanza other"):
        pgbackrest_text.parse_info(json.dumps(INFO), "other")
    with pytest.raises(RecoveryError, match="printed no JSON"):
        pgbackrest_text.parse_info("P00 ERROR: something", "main")


def test_newest_commit_time_honours_the_branch_point():
    assert pgbackrest_text.newest_commit_time(WALDUMP) == datetime.datetime(2026, 12, 7, 2, 38, 3, 441767, tzinfo=UTC)
    assert pgbackrest_text.newest_commit_time(WALDUMP, before_lsn=pgbackrest_text.lsn_value("0/0B0405C8")) == \
        datetime.datetime(2026, 12, 7, 2, 37, 2, 756015, tzinfo=UTC)
    assert pgbackrest_text.newest_commit_time("rmgr: XLOG desc: SWITCH\n") is None


def test_history_file_and_segment_names():
    text = "1\t0/5000140\tno recovery target specified\n\n2\t0/6000A28\tbefore transaction 727 at 2026-12-07\n"
    assert pgbackrest_text.parse_history(text, 3) == (2, 0x6000A28)
    with pytest.raises(RecoveryError, match="timeline 3 is not a timeline history"):
        pgbackrest_text.parse_history("garbage", 3)
    assert pgbackrest_text.segment_name(3, 0x6000A28, 16 * 2**20) == "000000030000000000000006"
    assert pgbackrest_text.segment_name(1, (1 << 32) + 0x2000000, 16 * 2**20) == "000000010000000100000002"


def test_restore_targets_need_an_offset_and_must_lie_in_the_window():
    assert pitr.parse_target("2026-12-24T18:00:00Z") == datetime.datetime(2026, 12, 24, 18, tzinfo=UTC)
    assert pitr.target_text(pitr.parse_target("2026-12-24T19:00:00.5+01:00")) == "2026-12-24 18:00:00.500000+00"
    with pytest.raises(RecoveryError, match="has no UTC offset"):
        pitr.parse_target("2026-12-24T18:00:00")
    with pytest.raises(RecoveryError, match="not an ISO 8601 time"):
        pitr.parse_target("yesterday")
    window = {"oldest": datetime.datetime(2026, 12, 24, 10, tzinfo=UTC), "oldest_backup": "F1",
              "newest": datetime.datetime(2026, 12, 24, 12, tzinfo=UTC), "newest_segment": "000000010000000000000009"}
    pitr.check_target(window, datetime.datetime(2026, 12, 24, 11, tzinfo=UTC))
    with pytest.raises(RecoveryError, match=r"before the oldest recoverable point .* \(end of backup F1\)"):
        pitr.check_target(window, datetime.datetime(2026, 12, 24, 9, tzinfo=UTC))
    with pytest.raises(RecoveryError, match=r"not before the newest archived commit .* \(WAL 0{7}1\w{16}\)"):
        pitr.check_target(window, window["newest"])


def test_config_refuses_line_breaks_and_writes_the_cipher_only_when_given():
    with pytest.raises(RecoveryError, match="option repo1-cipher-pass holds a line break"):
        pgbackrest_text.config_text([("repo1-cipher-pass", "a\nrepo1-path=/elsewhere")], "main", [])
    repo = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/srv/pg/data", 5432, "/run/postgresql")
    assert "cipher" not in repo.render_config()
    assert "repo1-retention-full-type=count" in repo.render_config()
    secret = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/srv/pg/data", 5432, "/run/postgresql",
                                   cipher_pass="s3cret", retention_full=14, retention_full_type="time")
    text = secret.render_config()
    assert "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=s3cret\n" in text
    assert "repo1-retention-full=14\nrepo1-retention-full-type=time\n" in text
    assert "s3cret" not in secret.archive_command() and "s3cret" not in " ".join(secret.argv("backup"))
    with pytest.raises(RecoveryError, match="retention_full_type 'weeks'"):
        pgbackrest.Repository("/r", "main", "/d", 5432, "/s", retention_full_type="weeks")
    with pytest.raises(RecoveryError, match="stanza name"):
        pgbackrest.Repository("/r", "a b", "/d", 5432, "/s")


def test_the_bucket_is_repo2_with_its_own_cipher_and_commands_name_the_repository_they_act_on():
    bucket = pgbackrest.S3Repo(host="s3.example.net", port=8443, bucket="backups", path="/db1/pgbackrest",
                               region="eu-west-1", key="AKID", secret="s3cret-key", uri_style="path",
                               ca_file="/etc/ssl/ours.pem", verify_tls=False, cipher_pass="pass2", retention_days=30)
    repo = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/srv/pg/data", 5432, "/run/postgresql",
                                 cipher_pass="pass1", bucket=bucket)
    text = repo.render_config()
    for line in ("repo2-type=s3", "repo2-path=/db1/pgbackrest", "repo2-s3-bucket=backups",
                 "repo2-s3-endpoint=s3.example.net", "repo2-storage-port=8443", "repo2-s3-region=eu-west-1",
                 "repo2-s3-uri-style=path", "repo2-s3-key=AKID", "repo2-s3-key-secret=s3cret-key",
                 "repo2-retention-full=30", "repo2-retention-full-type=time", "repo2-storage-verify-tls=n",
                 "repo2-storage-ca-file=/srv/backups/pgbackrest.conf.d/repo2-ca.pem", "repo2-cipher-type=aes-256-cbc",
                 "repo2-cipher-pass=pass2", "repo1-cipher-pass=pass1", "[global:archive-push]\nio-timeout=10"):
        assert line + "\n" in text, line
    assert "s3cret-key" not in repo.archive_command() and "s3cret-key" not in " ".join(repo.argv("backup"))
    assert "--repo=1" in repo.argv("info") and "--repo" not in " ".join(repo.argv("stanza-create"))
    remote = repo.in_bucket()
    assert "--repo=2" in remote.argv("restore") and "--repo" not in remote.archive_command()
    assert remote.location == "s3://backups/db1/pgbackrest" and repo.location == "/srv/backups/pgbackrest"
    assert repo.repo == pgbackrest.LOCAL  # the copy reads the bucket; the original still the local one
    with pytest.raises(RecoveryError, match="no repository in a bucket"):
        pgbackrest.Repository("/r", "main", "/d", 5432, "/s").in_bucket()


def test_archive_command_quotes_paths_for_the_shell():
    repo = pgbackrest.Repository("/srv/my backups/pgbackrest", "main", "/d", 5432, "/s")
    assert repo.archive_command() == ("%s --config='/srv/my backups/pgbackrest.conf.d/pgbackrest.conf' "
                                      "--stanza=main archive-push %%p" % repo.program)


def test_a_server_in_a_container_runs_its_commands_there_and_a_restore_here_writes_its_restore_command():
    def in_server(argv):
        return ["podman", "exec", "-u", "postgres", "c0ffee", *argv]

    repo = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/var/lib/postgresql/data/pgdata", 5432,
                                 "/run/postgresql", in_server=in_server,
                                 local_data_dir="/var/lib/docker/volumes/c_pgdata/_data/pgdata")
    config = "--config=/srv/backups/pgbackrest.conf.d/pgbackrest.conf"
    assert repo.archive_command() == "pgbackrest %s --stanza=main archive-push %%p" % config
    assert repo.argv("backup", "--type=full") == in_server(["pgbackrest", config, "--stanza=main", "--type=full",
                                                             "backup"])
    assert "exec" not in repo.argv("info") and "exec" not in repo.argv("repo-get")  # they need no server
    assert repo.restore_options() == [
        "--pg1-path=/var/lib/docker/volumes/c_pgdata/_data/pgdata",
        '--recovery-option=restore_command=pgbackrest %s --stanza=main archive-get %%f "%%p"' % config]
    assert "pg1-path=/var/lib/postgresql/data/pgdata" in repo.render_config()  # the server's own view
    here = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/srv/pg/data", 5432, "/run/postgresql")
    assert here.restore_options() == [] and here.archive_command().startswith(here.program)


def test_archiving_settings_wanted():
    repo = pgbackrest.Repository("/srv/backups/pgbackrest", "main", "/d", 5432, "/s")
    assert archiving.wanted_value("wal_level", "minimal", repo, 60) == "replica"
    assert archiving.wanted_value("wal_level", "logical", repo, 60) is None
    assert archiving.wanted_value("archive_mode", "always", repo, 60) is None
    assert archiving.wanted_value("archive_timeout", "60", repo, 60) is None
    assert archiving.wanted_value("archive_timeout", "0", repo, 60) == "60"
    assert archiving.sql_literal("it's") == "'it''s'"


def test_pgbackrest_error_line_is_passed_on():
    text = "WARN: something\nERROR: [055]: unable to load info file\n       HINT: is the stanza created?\n"
    assert pgbackrest_text.pgbackrest_error(text) == "ERROR: [055]: unable to load info file"


def test_a_torn_data_directory_is_emptied_only_after_a_restore_of_ours_began(tmp_path):
    data, marker = tmp_path / "data", tmp_path / pitr.RESTORING
    (data / "base").mkdir(parents=True)
    (data / "base" / "1").write_bytes(b"x")
    with pytest.raises(RecoveryError, match="no restore into it was begun here"):
        pitr._clear_torn_restore(str(data), str(marker))
    assert (data / "base" / "1").exists()
    marker.write_text(str(data))
    pitr._clear_torn_restore(str(data), str(marker))
    assert list(data.iterdir()) == []
    (data / "PG_VERSION").write_text("15\n")  # a cluster pgBackRest restores over by delta: left alone
    pitr._clear_torn_restore(str(data), str(marker))
    assert (data / "PG_VERSION").exists()


def test_history_is_kept_back_to_the_newest_proven_set_when_it_is_older_than_the_retention(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "app.yml").write_text("a: 1\n")
    backup_dir = str(tmp_path / "backups")
    made = make_backup_set(backup_dir, config_dir=str(config), progress=lambda _message: None)["set_id"]
    guard = Protection(backup_dir, os.path.join(backup_dir, "pgbackrest"), "christmas",
                       os.path.join(backup_dir, "pitr"), retention_days=30)
    assert guard.kept_days() == 30  # no set proven yet
    old = set_id_days_ago(40)
    copy_set(backup_dir, made, backup_dir, old)
    proof.add_rehearsal(backup_dir, old, {"passed": True})
    assert guard.kept_days() == 41  # the proven set's point stays restorable
    proof.add_rehearsal(backup_dir, made, {"passed": True})
    assert guard.kept_days() == 30  # a newer proven set: the retention again


def test_a_restore_puts_back_the_data_directorys_own_config_files_where_the_backup_holds_none(tmp_dir):
    """A backup of a cluster whose config lives in /etc (Debian) restored into a container's data directory: the
    restored directory gets the container's own postgresql.conf and pg_hba.conf back; a file the backup brought stays
    the backup's."""
    data, kept = os.path.join(tmp_dir, "data"), os.path.join(tmp_dir, "kept")
    os.mkdir(data)
    for name, text in (("postgresql.conf", "listen_addresses = '*'\n"), ("pg_hba.conf", "host all all 0/0 scram\n"),
                       ("pg_ident.conf", "# own\n")):
        with open(os.path.join(data, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    os.chmod(os.path.join(data, "pg_hba.conf"), 0o600)
    pitr._keep_own_config(data, kept)
    for name in os.listdir(data):  # the restore (a delta removes what the backup does not hold)
        os.unlink(os.path.join(data, name))
    with open(os.path.join(data, "pg_ident.conf"), "w", encoding="utf-8") as handle:
        handle.write("# the backup's\n")
    pitr._keep_own_config(data, kept)  # a rerun after a killed restore keeps the first copies
    pitr._put_back_own_config(data, kept, pwd.getpwuid(os.geteuid()).pw_name)
    with open(os.path.join(data, "postgresql.conf"), encoding="utf-8") as handle:
        assert handle.read() == "listen_addresses = '*'\n"
    assert os.stat(os.path.join(data, "pg_hba.conf")).st_mode & 0o777 == 0o600
    with open(os.path.join(data, "pg_ident.conf"), encoding="utf-8") as handle:
        assert handle.read() == "# the backup's\n"
    assert not os.path.exists(kept)
