"""A dry run (--check) says whether the restore can run: a plan that is not possible fails the play, one line per
problem, and a possible plan exits 0; neither changes anything."""

from __future__ import annotations

import os

from conftest import connection_vars, redis_state, seed_redis, tree_state


def _backed_up(run_playbook, platform, make_redis, config_dir, tmp_dir):
    server = make_redis(password="right-password")
    seed_redis(server)
    host_vars = connection_vars(platform, server, config_dir, os.path.join(tmp_dir, "backups"))
    run_playbook("backup", host_vars)
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("damaged\n")
    return server, host_vars


def test_a_dry_run_whose_plan_is_not_possible_fails_naming_each_problem(
        run_playbook, platform, make_redis, config_dir, tmp_dir):
    server, host_vars = _backed_up(run_playbook, platform, make_redis, config_dir, tmp_dir)
    before = (platform.snapshot(), redis_state(server), tree_state(config_dir))

    wrong = dict(host_vars, christmas_redis_password="wrong-password")
    run = run_playbook("restore_full", wrong, check=True, expect_ok=False)
    assert run.rc != 0
    failed = [line for line in run.output.splitlines() if "not possible now" in line]
    assert failed, run.output[-3000:]
    assert any("redis" in line.lower() and ("auth" in line.lower() or "password" in line.lower())
               for line in failed), failed
    assert (platform.snapshot(), redis_state(server), tree_state(config_dir)) == before

    missing = run_playbook("restore_config", host_vars, {"manifest": os.path.join(tmp_dir, "backups", "nope.json")},
                           check=True, expect_ok=False)
    assert missing.rc != 0 and "nope.json" in missing.output
    assert tree_state(config_dir) == before[2]


def test_a_dry_run_whose_plan_is_possible_exits_0_and_changes_nothing(
        run_playbook, platform, make_redis, config_dir, tmp_dir):
    server, host_vars = _backed_up(run_playbook, platform, make_redis, config_dir, tmp_dir)
    before = (platform.snapshot(), redis_state(server), tree_state(config_dir))
    run = run_playbook("restore_full", host_vars, check=True)
    assert "not possible now" not in run.output
    assert (platform.snapshot(), redis_state(server), tree_state(config_dir)) == before
