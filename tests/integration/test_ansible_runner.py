"""The playbooks run the way AWX runs a job: ansible-runner over a private data dir whose project/ is a checkout of
this repository (ansible-playbook runs from there, reading its ansible.cfg), a generated inventory/hosts, the
survey's answers in env/extravars and the credentials' secrets in an extra vars file of the private data dir, as
AWX's credential type injectors write them (the command line names the file, never a secret)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import ansible_runner
import jinja2
import pytest
from conftest import ROOT, assert_no_warnings, isolated_vars, redis_state, seed_redis, tree_state
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What a checkout brings: the tracked files (and, in a working tree, the new ones not ignored yet).
_LISTED = ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]


def checkout(target):
    """Copy the repository as a clone holds it; symlinks stay symlinks (.collections links back to the root)."""
    names = subprocess.run(_LISTED, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = os.path.join(ROOT, name)
        if not os.path.lexists(source):
            continue  # deleted in the working tree, not yet in the index
        os.makedirs(os.path.join(target, os.path.dirname(name)), exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), os.path.join(target, name))
        else:
            shutil.copy2(source, os.path.join(target, name))


def injected(type_name, inputs):
    """The extra vars a credential of awx/assets.json's credential type injects: its injector templates rendered
    with the credential's inputs, as AWX renders them."""
    with open(os.path.join(ROOT, "awx", "assets.json"), encoding="utf-8") as handle:
        (ctype,) = [t for t in json.load(handle)["credential_types"] if t["name"] == type_name]
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return {name: environment.from_string(template).render(**inputs)
            for name, template in ctype["injectors"]["extra_vars"].items()}


def credential_vars(platform, redis_server):
    return dict(
        injected("Christmas platform database", {
            "host": "127.0.0.1", "port": str(platform.cluster.port), "user": "christmas",
            "password": platform.password, "admin_user": "postgres", "admin_password": platform.cluster.password}),
        **injected("Christmas Redis", {"password": redis_server.password}))


class AwxJob:
    """One private data dir per job, laid out as AWX lays it out."""

    def __init__(self, base, host_vars, secrets):
        self.base = base
        self.secrets = secrets
        self.count = 0
        os.makedirs(os.path.join(base, "inventory"))
        os.makedirs(os.path.join(base, "env"))
        checkout(os.path.join(base, "project"))
        host = dict(host_vars, ansible_connection="local", ansible_python_interpreter=sys.executable)
        with open(os.path.join(base, "inventory", "hosts"), "w", encoding="utf-8") as handle:
            json.dump({"christmas": {"hosts": {"platform": host}}, "christmas_vault": {"hosts": {}}}, handle)
        # AWX writes an injector's extra_vars into a file of the private data dir and passes -e @file.
        self.credential_file = os.path.join(base, "env", "credential_extravars")
        with open(os.open(self.credential_file, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as handle:
            json.dump(secrets, handle)

    def run(self, playbook, survey=None, job_type="run"):
        self.count += 1
        with open(os.path.join(self.base, "env", "extravars"), "w", encoding="utf-8") as handle:
            json.dump(dict(survey or {}, awx_job_id=self.count, awx_user_name="operator-on-awx"), handle)
        cmdline = "-e @%s" % self.credential_file + (" --check" if job_type == "check" else "")
        with open(os.path.join(self.base, "env", "cmdline"), "w", encoding="utf-8") as handle:
            handle.write(cmdline)
        runner = ansible_runner.run(
            private_data_dir=self.base, playbook=playbook, ident="job-%d" % self.count, quiet=True,
            envvars={"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                     "ANSIBLE_NOCOLOR": "1"})
        assert_no_warnings(runner.stdout.read())
        return runner

    def artifacts(self, runner):
        """Every file ansible-runner kept of the job, as bytes by relative path."""
        found = {}
        root = os.path.join(self.base, "artifacts", runner.config.ident)
        for base, _dirs, files in os.walk(root):
            for name in files:
                with open(os.path.join(base, name), "rb") as handle:
                    found[os.path.relpath(os.path.join(base, name), root)] = handle.read()
        return found


def assert_successful(job, runner):
    stdout = runner.stdout.read()
    assert runner.status == "successful" and runner.rc == 0, stdout[-4000:]
    artifacts = job.artifacts(runner)
    assert "stdout" in artifacts and "command" in artifacts and "rc" in artifacts
    events = [json.loads(data) for name, data in artifacts.items() if name.startswith("job_events/")]
    kinds = {event["event"] for event in events}
    assert {"playbook_on_start", "runner_on_ok", "playbook_on_stats"} <= kinds
    assert not kinds & {"runner_on_failed", "runner_on_unreachable"} or all(
        event["event_data"].get("ignore_errors") for event in events if event["event"] == "runner_on_failed")
    # ansible-playbook ran from project/, whose ansible.cfg resolves the collection from the checkout.
    command = json.loads(artifacts["command"])
    assert command["cwd"] == os.path.join(job.base, "project")
    return artifacts, stdout


def assert_no_secret(job, artifacts):
    secrets = [value for key, value in job.secrets.items() if key.endswith("_password")]
    assert len(secrets) == 3 and all(secrets)
    for secret in secrets:
        for name, data in artifacts.items():
            assert secret.encode() not in data, "a secret appears in the artifact %s" % name


def incident_rows(host_vars, columns):
    connection = sqlite3.connect(host_vars["christmas_incident_db"])
    try:
        return connection.execute("SELECT %s FROM christmas_incidents ORDER BY id" % columns).fetchall()
    finally:
        connection.close()


@pytest.fixture
def awx_platform(platform, make_redis, config_dir, tmp_dir):
    server = make_redis(password="redis-on-awx-1")
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = dict(isolated_vars(tmp_dir), christmas_config_dir=config_dir, christmas_backup_dir=backup_dir,
                     christmas_redis_host="127.0.0.1", christmas_redis_port=server.port)
    job = AwxJob(os.path.join(tmp_dir, "awx-job"), host_vars, credential_vars(platform, server))
    return job, server, backup_dir, host_vars


def test_backup_verify_and_restore_run_under_ansible_runner_as_awx_runs_them(awx_platform, platform, config_dir):
    job, server, backup_dir, host_vars = awx_platform
    db_before = platform.snapshot()

    artifacts, _ = assert_successful(job, job.run("playbooks/backup.yml"))
    assert_no_secret(job, artifacts)
    manifests = glob.glob(os.path.join(backup_dir, "manifest_*.json"))
    assert len(manifests) == 1
    with open(manifests[0], encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert os.path.isdir(os.path.join(backup_dir, "set_" + manifest["set_id"]))

    artifacts, stdout = assert_successful(job, job.run("playbooks/verify_backup.yml",
                                                       {"manifest": "latest", "deep": "true", "vault": ""}))
    assert_no_secret(job, artifacts)
    assert manifest["set_id"] in stdout

    platform.sql("DELETE FROM market_data WHERE symbol = 'SYM3'; TRUNCATE orders")
    assert platform.snapshot() != db_before
    survey = {"manifest": "latest", "confirm": "platform", "incident_type": "database",
              "incident_symptoms": "api answers 503", "incident_impact": "no trading since 09:12"}
    broken = platform.snapshot()
    assert_successful(job, job.run("playbooks/restore_db.yml", survey, job_type="check"))
    assert platform.snapshot() == broken  # job type check: the dry run
    artifacts, _ = assert_successful(job, job.run("playbooks/restore_db.yml", survey))
    assert_no_secret(job, artifacts)
    assert platform.snapshot() == db_before

    # The recovery record holds the survey's answers and the AWX user who launched the job.
    assert incident_rows(host_vars, "procedure, status, operator, incident_type, incident_symptoms, incident_impact, "
                         "backup_set") == [("db", "recovered", "operator-on-awx", "database", "api answers 503",
                                            "no trading since 09:12", manifest["set_id"])]


@pytest.mark.parametrize("components", [["db", "config"], "db, config"], ids=["survey list", "command line"])
def test_restore_full_restores_the_components_the_survey_chose(awx_platform, platform, config_dir, components):
    job, server, _backup_dir, host_vars = awx_platform
    assert_successful(job, job.run("playbooks/backup.yml"))
    good_db, good_tree = platform.snapshot(), tree_state(config_dir)

    platform.sql("TRUNCATE orders")
    server.client(0).delete("user:1")
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")
    broken_redis = redis_state(server)

    survey = {"manifest": "latest", "components": components, "confirm": "platform"}
    artifacts, _ = assert_successful(job, job.run("playbooks/restore_full.yml", survey))
    assert_no_secret(job, artifacts)
    assert platform.snapshot() == good_db
    assert tree_state(config_dir) == good_tree
    assert redis_state(server) == broken_redis
    (procedure, components), = incident_rows(host_vars, "procedure, components")
    assert (procedure, json.loads(components)) == ("partial", ["db", "config"])


@pytest.mark.parametrize("survey, message", [
    ({"confirm": "trading-02"}, "confirm names 'trading-02', not platform: nothing was restored"),
    ({"confirm": "platform", "components": ["db", "database"]},
     "components '['db', 'database']': name one or more of db, redis, config"),
    ({"confirm": "platform", "components": []}, "components '[]': name one or more of db, redis, config"),
])
def test_restore_refuses_a_wrong_confirmation_or_components_before_touching_anything(
        awx_platform, platform, survey, message):
    job, _server, backup_dir, _ = awx_platform
    assert_successful(job, job.run("playbooks/backup.yml"))
    platform.sql("TRUNCATE orders")
    broken = platform.snapshot()

    runner = job.run("playbooks/restore_full.yml", dict(survey, manifest="latest"))
    stdout = runner.stdout.read()
    assert runner.status == "failed" and runner.rc != 0
    assert message in stdout, stdout[-3000:]
    assert platform.snapshot() == broken
    assert not glob.glob(os.path.join(backup_dir, ".restore_*"))
