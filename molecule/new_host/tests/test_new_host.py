"""After provision_host.yml on a bare host: podman and podman-compose installed, the platform's repository checked
out, the lost host's newest set fetched from the vault, the platform running as a compose project with exactly the
data the lost host had, validated, recorded once; and the second run (idempotence) changed nothing."""

from __future__ import annotations

import json
import os

import pytest

testinfra_hosts = ["newhost"]

COMPOSE_DIR = "/srv/christmas"
BACKUP_DIR = "/var/backups/christmas"
SERVICES = ("timescaledb", "redis", "api")


@pytest.fixture(scope="module")
def source_state():
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "source_state.json"), encoding="utf-8") as f:
        return json.load(f)


def test_the_engine_and_what_the_modules_need_are_installed(host):
    for package in ("podman", "podman-compose", "netavark", "aardvark-dns", "python3-crcmod", "python3-cryptography",
                    "postgresql-client-15", "rsync", "git"):
        assert host.package(package).is_installed, package


def test_the_platform_repository_is_checked_out_at_the_vaults_main(host, lab_host):
    served = lab_host("vault").check_output("git --git-dir /srv/git/christmas-platform.git rev-parse main")
    assert host.check_output("git -C %s rev-parse HEAD", COMPOSE_DIR) == served
    assert host.file(COMPOSE_DIR + "/compose.yaml").is_file


def test_the_platform_files_are_written_privately(host, hostvars):
    for entry in hostvars["christmas_platform_files"]:
        written = host.file("%s/%s" % (COMPOSE_DIR, entry["path"]))
        assert written.mode == 0o600 and written.user == "root"
    assert host.file(COMPOSE_DIR + "/secrets").mode == 0o700


def test_every_service_runs_in_the_compose_project(host):
    label = "label=com.docker.compose.project.working_dir=%s" % COMPOSE_DIR
    every = host.check_output("podman ps -a --filter %s --format '{{.Names}}'", label).split()
    running = host.check_output("podman ps --filter %s --filter status=running --format '{{.Names}}'", label).split()
    assert sorted(every) == sorted(running) == sorted("christmas_%s_1" % service for service in SERVICES)


def test_the_api_reports_healthy(host):
    probe = host.run("python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:8080/health\", "
                     "timeout=10).status)'")
    assert probe.rc == 0 and probe.stdout.strip() == "200", probe.stderr


def test_the_data_is_exactly_what_the_lost_host_had(host, hostvars, source_state):
    state = host.run("PGPASSWORD=%s REDISCLI_AUTH=%s lab-platform-state %s", hostvars["christmas_db_password"],
                     hostvars["christmas_redis_password"], hostvars["christmas_config_dir"])
    assert state.rc == 0, state.stderr
    now = json.loads(state.stdout)
    assert now["db"] == source_state["db"]
    assert now["redis"] == source_state["redis"]
    assert now["config"] == source_state["config"]
    assert source_state["db"]["market_data"][0] == 3000


def test_the_fetched_set_is_complete_private_and_nothing_is_left_incoming(host):
    manifests = host.check_output("ls %s", BACKUP_DIR).split()
    assert len([name for name in manifests if name.startswith("manifest_")]) == 1
    entries = host.check_output("find %s -mindepth 1 ! -name .christmas-recovery.lock -printf '%%m %%y %%P\\n'",
                                BACKUP_DIR).splitlines()
    assert not [line for line in entries if not line.startswith(("600 f ", "700 d "))]
    assert not [line for line in entries if " .incoming/" in line]


def test_the_recovery_was_recorded_once(host):
    count = host.check_output("python3 -c 'import sqlite3; print(sqlite3.connect(\"/var/lib/christmas/"
                              "incidents.sqlite\").execute(\"SELECT count(*), min(status) FROM christmas_incidents\")"
                              ".fetchone())'")
    assert count == "(1, 'recovered')"
