"""The collection's playbooks as an operator runs them: a generated inventory, passwords in a 0600 vars file."""

from __future__ import annotations

import json
import os
import sys

import yaml
from dataset import write_private_json
from measure import run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK_DIR = os.path.join(ROOT, "playbooks")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
ROLE_DEFAULTS = os.path.join(ROOT, "roles", "christmas", "defaults", "main.yml")

# A play with nothing to do, against the same inventory: the fixed cost of starting ansible-playbook.
NOOP_PLAY = [{"name": "Nothing to do", "hosts": "christmas", "gather_facts": False,
              "tasks": [{"name": "Say so", "ansible.builtin.debug": {"msg": "nothing to do"}}]}]


def role_default(name):
    with open(ROLE_DEFAULTS, encoding="utf-8") as handle:
        return yaml.safe_load(handle)[name]


class Playbooks:
    """Runs playbooks against a one-host inventory (local connection) written under ``run_dir``."""

    def __init__(self, run_dir, settings):
        self.run_dir = run_dir
        self.settings = settings  # vars every run gets (jobs, compress level, ports, passwords)
        self.inventory = os.path.join(run_dir, "inventory.json")
        self.vars_file = os.path.join(run_dir, "vars.json")
        self.noop = os.path.join(run_dir, "noop_play.json")
        scratch = os.path.join(run_dir, "tmp")  # Ansible's and the modules' temporary files stay in the run directory
        os.makedirs(scratch, 0o700, exist_ok=True)
        self.env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_LOCAL_TEMP=scratch, ANSIBLE_REMOTE_TEMP=scratch, TMPDIR=scratch)
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        group_vars = {"christmas_db_host": "127.0.0.1", "christmas_redis_host": "127.0.0.1",
                      "christmas_db_admin_user": "postgres", "christmas_retention_days": 30,
                      "christmas_service_manager": "none",
                      "christmas_incident_db": os.path.join(run_dir, "incidents", "incidents.sqlite"),
                      "christmas_metrics_dir": os.path.join(run_dir, "metrics"),
                      "christmas_signing_key_file": os.path.join(run_dir, "signing.key")}
        with open(self.inventory, "w", encoding="utf-8") as handle:
            json.dump({"christmas": {"hosts": {"bench": host}, "vars": group_vars}}, handle, indent=1)
        with open(self.noop, "w", encoding="utf-8") as handle:
            json.dump(NOOP_PLAY, handle, indent=1)

    def argv(self, playbook, *extra):
        path = playbook if os.path.isabs(playbook) else os.path.join(PLAYBOOK_DIR, playbook)
        return [ANSIBLE_PLAYBOOK, "-i", self.inventory, path, "-e", "@" + self.vars_file, *extra]

    def run(self, playbook, variables, *extra, log_path):
        """ansible-playbook PLAYBOOK -e @vars.json EXTRA...; ``variables`` override the settings for this run."""
        write_private_json(self.vars_file, {**self.settings, **variables})
        return run_command(self.argv(playbook, *extra), log_path, env=self.env, cwd=ROOT)
