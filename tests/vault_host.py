"""A vault host for the tests: a lab container running sshd, published on 127.0.0.1, with its vault directory
bind-mounted from a temp dir so that what arrives there is read here on the same files; root logs in with a key made
here. Removed when its module ends."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest
from sandbox import free_port

from lab import build_image, lab_env


def podman(*args, check=True):
    return subprocess.run(["podman", *args], env=lab_env(), capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def vault(module_dir):
    """An sshd container whose /vault is a directory of this machine; root logs in with a key made here."""
    root = tempfile.mkdtemp(prefix="vault-", dir=module_dir)
    key = os.path.join(root, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    shutil.copy(key + ".pub", os.path.join(root, "authorized_keys"))
    os.chmod(os.path.join(root, "authorized_keys"), 0o600)
    store = os.path.join(root, "store")
    os.mkdir(store, 0o700)
    port = free_port()
    name = "christmas-vault-%s" % secrets.token_hex(4)
    podman("run", "-d", "--name", name, "-p", "127.0.0.1:%d:22" % port,
           "-v", "%s:/root/.ssh/authorized_keys:ro" % os.path.join(root, "authorized_keys"),
           "-v", "%s:/vault" % store, build_image(),
           "bash", "-c", "ssh-keygen -A && exec /usr/sbin/sshd -D -e")
    try:
        known_hosts = os.path.join(root, "known_hosts")
        host_key = _wait_for_host_key(name)
        with open(known_hosts, "w", encoding="utf-8") as handle:
            handle.write("[127.0.0.1]:%d %s\n" % (port, " ".join(host_key.split()[:2])))
        _wait_for_ssh(port, key, known_hosts)
        yield {"store": store, "port": port, "key": key, "known_hosts": known_hosts, "root": root}
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _wait_for_host_key(name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = podman("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
        time.sleep(0.2)
    raise AssertionError("the vault container made no host key")


def _wait_for_ssh(port, key, known_hosts, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["ssh", "-p", str(port), "-i", key, "-o", "BatchMode=yes", "-o",
                               "UserKnownHostsFile=%s" % known_hosts, "root@127.0.0.1", "true"],
                              capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("sshd in the vault container does not answer")
