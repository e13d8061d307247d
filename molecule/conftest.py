"""Testinfra helpers shared by every Molecule scenario: the scenario's inventory and probes run on its hosts."""

from __future__ import annotations

import json
import re

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

# Opens a TCP connection from the host under test: reachability without ping (not in the lab image).
_CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"


@pytest.fixture(scope="session")
def inventory(request):
    """The scenario's Ansible inventory, as Molecule passed it to testinfra."""
    return AnsibleRunner(request.config.option.ansible_inventory)


@pytest.fixture(scope="session")
def address_of(inventory):
    """The lab address of an inventory host (its fixed --ip)."""

    def address(name):
        return inventory.get_variables(name)["ansible_host"]

    return address


@pytest.fixture
def hostvars(host):
    """The inventory variables of the host under test (inventory_hostname, group_names, ansible_host, ...)."""
    return host.ansible.get_variables()


@pytest.fixture
def connects(host):
    """Whether the host under test can open a TCP connection to an address and port."""

    def connect(address, port):
        return host.run("python3 -c %s %s %s", _CONNECT, address, str(port)).rc == 0

    return connect


@pytest.fixture(scope="session")
def lab_host(request):
    """A testinfra host of the scenario by inventory name, for checks that compare two hosts."""

    def get(name):
        return testinfra.get_host("ansible://%s" % name, ansible_inventory=request.config.option.ansible_inventory)

    return get


@pytest.fixture(scope="session")
def set_files():
    """{relative path: sha256} of every file of the complete sets in a directory of a host, and their owners/modes."""

    def files(host, directory):
        listing = host.run("cd %s && find manifest_* set_* -type f | sort | xargs -r sha256sum", directory)
        assert listing.rc == 0, listing.stderr
        return {path: digest for digest, path in (line.split(None, 1) for line in listing.stdout.splitlines())}

    return files


@pytest.fixture(scope="session")
def no_warnings():
    """Checks an ansible-playbook run's output: ansible-playbook only warns of a template error (an undefined variable
    in a task's name) or a deprecation, and a scenario's own playbook runs fail on any [WARNING] instead."""

    def check(output):
        warned = re.findall(r"^\[(?:DEPRECATION )?WARNING\]: .*", output, re.MULTILINE)
        assert not warned, "ansible-playbook warned:\n" + "\n".join(warned)

    return check


@pytest.fixture(scope="session")
def drill_passed():
    """Checks a drill's record as the incident database holds it: passed, exactly the given checks answered and all
    ok, every figure within the target the drill was given; returns the figures."""

    def check(record, checks, targets):
        answered = json.loads(record["verification"])
        assert {item["name"] for item in answered} == checks
        assert [item["name"] for item in answered if not item["ok"]] == []
        assert record["status"] == "passed" and record["incident_type"] == "drill"
        figures = json.loads(record["measurements"])
        assert {key: figures["target_" + key] for key in targets} == targets
        for key, target in targets.items():
            assert 0 <= figures[key] <= target, key
        return figures

    return check
