"""The failover drill (playbooks/dr_drill.yml -e scenario=failover), run last (after test_switchover.py, which leaves
a running primary and its streaming standby): the primary's PostgreSQL crashes, keepalived moves the virtual IP,
failover.yml -e mode=failover promotes the standby and fences the old primary, the drill rebuilds it as the new
primary's standby. Checked on the servers and in the client's incident database; the figures are printed and written
to $MOLECULE_EPHEMERAL_DIRECTORY/ha_drill.json. Afterwards the roles are swapped: the pair is whole, the other way
round."""

from __future__ import annotations

import json
import os
import subprocess
import time

testinfra_hosts = ["client"]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
VIP = "10.77.104.100"
INCIDENTS = "/var/lib/christmas/incidents.sqlite"
# Generous: the lab measures about 6 s, 15 s and 0 s (docs/ha.md).
TARGETS = {"detection_seconds": 30, "rto_seconds": 180, "rpo_seconds": 5}
DRILL_CHECKS = {"failover succeeds", "data intact after recovery", "all services restart normally",
                "old primary fenced", "old primary rebuilt as a standby", "alerts fire in time",
                "recovery time within expectations", "data loss within target"}


def _sql(host, hostvars, statement, address="127.0.0.1"):
    done = host.run("PGPASSWORD=%s psql -h %s -U postgres -d christmas -Atqc %s",
                    hostvars["christmas_db_admin_password"], address, statement)
    assert done.rc == 0, done.stderr
    return done.stdout.strip()


def _drill(request):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"))
    config = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg")
    if os.path.exists(config):
        env["ANSIBLE_CONFIG"] = config
    extra = {"scenario": "failover", "christmas_drill_targets_override": {"failover": TARGETS}}
    done = subprocess.run(["ansible-playbook", "-i", request.config.option.ansible_inventory,
                           os.path.join(ROOT, "playbooks", "dr_drill.yml"), "-e", json.dumps(extra)],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    request.getfixturevalue("no_warnings")(done.stdout + done.stderr)


def _drills(host):
    script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row; "
              "print(json.dumps([dict(r) for r in c.execute(\"SELECT * FROM christmas_incidents "
              "WHERE procedure = 'drill_failover' ORDER BY id\")]))")
    found = host.run("python3 -c %s %s", script, INCIDENTS)
    return json.loads(found.stdout) if found.rc == 0 else []


def test_the_failover_drill_promotes_the_standby_keeps_the_data_and_leaves_the_pair_whole(
        request, host, db1, db2, hostvars, capsys, drill_passed):
    primary, standby = (db1, db2) if _sql(db1, hostvars, "SELECT pg_is_in_recovery()") == "f" else (db2, db1)
    assert _sql(standby, hostvars, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    before = len(_drills(host))

    _drill(request)

    drills = _drills(host)
    assert len(drills) == before + 1
    drill = drills[-1]
    figures = drill_passed(drill, DRILL_CHECKS, TARGETS)
    # The new primary takes writes through the virtual IP, which only it holds; the marker from before the fault and
    # the write after it are there, and on the rebuilt standby too.
    assert _sql(standby, hostvars, "SELECT pg_is_in_recovery()") == "f"
    assert VIP in standby.check_output("ip -4 -o addr show") and VIP not in primary.check_output("ip -4 -o addr show")
    markers = _sql(host, hostvars, "SELECT marker FROM christmas_drill_markers ORDER BY written_at", VIP).split()
    assert markers[-1] == markers[-2] + ".after"
    assert _sql(host, hostvars, "INSERT INTO positions VALUES ('after-drill-%d', 1, now())" % time.time_ns(), VIP) == ""
    assert _sql(primary, hostvars, "SELECT pg_is_in_recovery()") == "t"
    assert _sql(primary, hostvars, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    assert primary.file("/etc/postgresql/15/main/start.conf").content_string.split()[-1] == "auto"
    replayed = _sql(primary, hostvars, "SELECT count(*) FROM christmas_drill_markers WHERE marker IN ('%s', '%s')"
                    % tuple(markers[-2:]))
    assert replayed == "2"

    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ha_drill.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=1, sort_keys=True)
    with capsys.disabled():
        print("\nha_drill %s: %s" % (path, json.dumps(figures, sort_keys=True)))
