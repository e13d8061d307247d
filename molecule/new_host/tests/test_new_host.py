"""After the host_loss drill (converge: playbooks/dr_drill.yml -e scenario=host_loss): the platform host is lost (its
servers down, its backups gone), and provision_host.yml made the bare host its replacement: podman and podman-compose
installed, the platform's repository checked out, the lost host's newest set and recovery window fetched from the
vault, the platform running as a compose project restored to the newest point of that window (exactly the data the
lost host had when it last shipped), validated, the recovery and the drill recorded once each (the drill's figures
printed and written to $MOLECULE_EPHEMERAL_DIRECTORY/new_host_drill.json); and a second run of provision_host.yml to
the same second changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

testinfra_hosts = ["newhost"]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
COMPOSE_DIR = "/srv/christmas"
BACKUP_DIR = "/var/backups/christmas"
SERVICES = ("timescaledb", "redis", "api")
INCIDENTS = "/var/lib/christmas/incidents.sqlite"
# The drill's targets in converge.yml.
TARGETS = {"detection_seconds": 30, "rto_seconds": 600, "rpo_seconds": 3600}
DRILL_CHECKS = {"newest set on the vault", "restore succeeds", "data intact after recovery",
                "all services restart normally", "alerts fire in time", "recovery time within expectations",
                "data loss within target"}


@pytest.fixture(scope="module")
def source_state():
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "source_state.json"), encoding="utf-8") as f:
        return json.load(f)


def test_the_engine_and_what_the_modules_need_are_installed(host):
    for package in ("podman", "podman-compose", "netavark", "aardvark-dns", "python3-crcmod", "python3-cryptography",
                    "postgresql-client-15", "pgbackrest", "rsync", "git"):
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
    # The set's files; the recovery window fetched beside them (pgBackRest's repository and its config directory,
    # the AOF and config versions) is pgBackRest's and the server's to write.
    entries = host.check_output("find %s -mindepth 1 ! -name .christmas-recovery.lock ! -path '%s/pgbackrest*' "
                                "! -path '%s/pitr*' -printf '%%m %%y %%P\\n'", BACKUP_DIR, BACKUP_DIR,
                                BACKUP_DIR).splitlines()
    assert not [line for line in entries if not line.startswith(("600 f ", "700 d "))]
    assert not [line for line in entries if " .incoming/" in line]


def _records(host, procedure):
    """The incident records of a procedure on the host, oldest first, as dicts."""
    script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row; "
              "print(json.dumps([dict(r) for r in c.execute('SELECT * FROM christmas_incidents WHERE procedure = ? "
              "ORDER BY id', (sys.argv[2],))]))")
    return json.loads(host.check_output("python3 -c %s %s %s", script, INCIDENTS, procedure))


def test_the_lost_host_is_down_and_its_backups_are_gone(lab_host):
    platform = lab_host("platform")
    assert platform.run("pg_lsclusters -h").stdout.split()[3] == "down"
    assert platform.run("pgrep -f 'redis-server 127.0.0.1:6379'").rc == 1
    assert not platform.file(BACKUP_DIR).exists


def test_the_drill_is_recorded_as_passed_with_its_figures(host, capsys, drill_passed):
    drills = _records(host, "drill_host_loss")
    assert len(drills) == 1
    drill = drills[0]
    figures = drill_passed(drill, DRILL_CHECKS, TARGETS)
    # Restored to the newest point of the lost host's window on the vault (a second at or after the set prepare
    # made before the fault, the only set on the replacement), on a new timeline.
    manifests = [name for name in host.check_output("ls %s", BACKUP_DIR).split() if name.startswith("manifest_")]
    assert len(manifests) == 1
    assert drill["backup_set"].startswith("pitr-") and drill["backup_set"][5:] >= manifests[0][9:24]
    timeline = host.run("podman exec -u postgres christmas_timescaledb_1 psql -XAtc "
                        "'SELECT timeline_id FROM pg_control_checkpoint()'")
    assert timeline.rc == 0 and int(timeline.stdout) > 1, timeline.stderr
    assert figures["rpo_seconds"] > 0
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "new_host_drill.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=1, sort_keys=True)
    with capsys.disabled():
        print("\nnew_host_drill %s: %s" % (path, json.dumps(figures, sort_keys=True)))


def test_provisioning_again_to_the_same_second_changes_nothing(host, request):
    point = _records(host, "drill_host_loss")[0]["backup_set"][5:]  # pitr-YYYYmmdd_HHMMSS: where the drill got
    target = "%s-%s-%sT%s:%s:%sZ" % (point[:4], point[4:6], point[6:8], point[9:11], point[11:13], point[13:15])
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    config = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg")
    if os.path.exists(config):
        env["ANSIBLE_CONFIG"] = config
    done = subprocess.run(["ansible-playbook", "-i", request.config.option.ansible_inventory,
                           os.path.join(ROOT, "playbooks", "provision_host.yml"), "-e", "target_time=" + target],
                          env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    request.getfixturevalue("no_warnings")(done.stdout + done.stderr)
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", done.stdout, re.MULTILINE)
    assert recap and all(changed == "0" for _host, changed in recap), done.stdout[-4000:]


def test_the_recovery_was_recorded_once(host):
    recoveries = _records(host, "full")
    assert [record["status"] for record in recoveries] == ["recovered"]
