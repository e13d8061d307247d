"""The lab itself, in every scenario: each container is the host its platform names, serves SSH, reaches the other
hosts of its scenario, and has no route beyond the scenario's network."""

from __future__ import annotations

testinfra_hosts = ["all"]


def test_hostname_is_the_platform_name(host, hostvars):
    assert host.check_output("hostname") == hostvars["inventory_hostname"]


def test_sshd_is_running_and_listening(host):
    assert host.process.filter(comm="sshd")
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_reaches_every_other_host_over_the_lab_network(hostvars, inventory, address_of, connects):
    others = [name for name in inventory.get_hosts("all") if name != hostvars["inventory_hostname"]]
    assert others, "a scenario needs at least two hosts"
    unreachable = [name for name in others if not connects(address_of(name), 22)]
    assert not unreachable


def test_has_no_route_beyond_the_lab_network(host):
    route = host.check_output("ip -4 route")
    assert "default" not in route, route
