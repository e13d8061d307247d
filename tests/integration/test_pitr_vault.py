"""A replacement host restores the platform to a second from a vault: archive.yml mirrors continuous protection's
history to a vault host (an sshd container, reached by Ansible and rsync over SSH), the platform host is lost (its
database server, data directory, backup directory and SSH key gone, Redis emptied, the config tree removed), and
fetch_backup.yml -e history=true then restore_full.yml -e target_time=T bring everything back as it stood at T."""

from __future__ import annotations

import base64
import os
import secrets
import shutil

import pytest
from conftest import run_module
from pitr_helpers import changes_after, changes_before, iso, protect, second_boundary, state

from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PgCtlServer

pytestmark = pytest.mark.xdist_group("podman")


def _vault_group(vault):
    """The vault container as an inventory host of the group christmas_vault."""
    return {"christmas_vault": {"hosts": {"vault": {
        "ansible_host": "127.0.0.1", "ansible_port": vault["port"], "ansible_user": "root",
        "ansible_ssh_private_key_file": vault["key"], "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_remote_tmp": "/tmp",  # exists: Ansible warns when it has to make its default
        "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes" % vault["known_hosts"],
        "christmas_vault_ssh_port": vault["port"]}}}}


def _files_holding(root, marker):
    found = []
    for top, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(top, name), "rb") as handle:
                if marker in handle.read():
                    found.append(os.path.relpath(os.path.join(top, name), root))
    return found


def _lose_the_host(env, ssh_dir):
    """The platform host is gone: a replacement has an empty Redis, no database, no backups, no config tree and no
    SSH key of its own yet."""
    PgCtlServer(env.platform.cluster.data).stop(mode="immediate")
    shutil.rmtree(env.platform.cluster.data)
    shutil.rmtree(env.backup_dir)
    shutil.rmtree(env.config_dir)
    shutil.rmtree(ssh_dir)
    env.redis.client().flushall()


def _fetch_args(env, vault, directory, backup_dir, ssh_dir):
    """christmas_offsite_history fetching the vault's ``directory`` into ``backup_dir``, as the replacement host."""
    return {"direction": "fetch", "backup_dir": backup_dir, "pitr_repo": os.path.join(backup_dir, "pgbackrest"),
            "pitr_dir": os.path.join(backup_dir, "pitr"), "pg_data_dir": env.platform.cluster.data,
            "pitr_encryption": True, "vault_host": "127.0.0.1", "vault_port": vault["port"],
            "vault_user": "christmas-vault", "vault_dir": directory, "ssh_key_file": os.path.join(ssh_dir, "vault_key"),
            "known_hosts_file": os.path.join(ssh_dir, "known_hosts")}


def _refused_fetches(env, vault, name, ssh_dir):
    """Fetches that cannot be done are refused in one line and keep nothing; a killed one is done again."""
    def fetch(directory, backup_dir, key):
        result, _output = run_module(env.tmp_dir, "christmas_offsite_history", dict(
            _fetch_args(env, vault, directory, backup_dir, ssh_dir), encryption_key=key))
        assert result.get("failed"), result
        return result["msg"]

    other_key = base64.b64encode(os.urandom(32)).decode("ascii")
    elsewhere = os.path.join(env.tmp_dir, "elsewhere")
    history = "/vault/%s/platform" % name
    assert "does not match the AOF and config history on 127.0.0.1" in fetch(history, elsewhere, other_key)
    assert sorted(os.listdir(elsewhere)) == []  # nothing kept, not even a partial copy
    assert "holds no history of continuous protection in /vault/%s/nobody/history" % name \
        in fetch("/vault/%s/nobody" % name, elsewhere, other_key)
    os.makedirs(os.path.join(elsewhere, "pgbackrest", "archive"))
    assert "pgBackRest repository %s exists on this host already" % os.path.join(elsewhere, "pgbackrest") \
        in fetch(history, elsewhere, env.host_vars["christmas_encryption_key"])
    assert os.listdir(os.path.join(elsewhere, "pgbackrest")) == ["archive"]

    # A fetch killed while it put its copies in place left them with its pending marker: the next one starts over.
    killed = os.path.join(env.tmp_dir, "killed")
    os.makedirs(os.path.join(killed, "pgbackrest", "half"))
    with open(os.path.join(killed, ".history-fetched.json.pending"), "w", encoding="utf-8") as handle:
        handle.write("{}")
    result, _output = run_module(env.tmp_dir, "christmas_offsite_history", dict(
        _fetch_args(env, vault, history, killed, ssh_dir), encryption_key=env.host_vars["christmas_encryption_key"]))
    assert result["changed"] and result["newest_backup"], result
    assert not os.path.exists(os.path.join(killed, "pgbackrest", "half"))
    assert sorted(os.listdir(killed)) == [".history-fetched.json", "pgbackrest", "pgbackrest.conf.d", "pitr"]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_replacement_host_restores_the_platform_to_a_second_from_the_vault(
        encrypted, platform, make_redis, config_dir, tmp_dir, run_playbook, vault):
    marker = "vault-marker-%s" % secrets.token_hex(8)
    with open(os.path.join(config_dir, "secret.yml"), "w", encoding="utf-8") as handle:
        handle.write("token: %s\n" % marker)
    name = "platform-%s" % secrets.token_hex(4)
    ssh_dir = os.path.join(tmp_dir, "ssh")
    extra = {"christmas_vault_dir": "/vault/%s" % name, "christmas_vault_ssh_key": os.path.join(ssh_dir, "vault_key"),
             "christmas_vault_known_hosts": os.path.join(ssh_dir, "known_hosts")}
    if encrypted:
        extra.update(christmas_encryption=True,
                     christmas_encryption_key=base64.b64encode(os.urandom(32)).decode("ascii"))
    groups = _vault_group(vault)
    os.chmod(vault["store"], 0o711)  # the vault's account reaches its directory below it
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook, groups=groups, **extra)
    on_vault = os.path.join(vault["store"], name, "platform", "history")
    try:
        changes_before(env)
        env.redis.client(0).set("fill:marker", marker)
        run_playbook("archive", env.host_vars, groups=groups)
        expected = state(env)
        target = second_boundary()
        changes_after(env)
        run_playbook("archive", env.host_vars, groups=groups)

        # The vault holds the window: the repository, the AOF and config versions; sealed with encryption on.
        assert os.path.isfile(os.path.join(on_vault, "pgbackrest", "backup", "christmas", "backup.info"))
        holding = _files_holding(os.path.join(on_vault, "pitr"), marker.encode("ascii"))
        assert (holding == []) == encrypted, holding
        assert os.path.isfile(os.path.join(on_vault, "pitr", "KEY_ID")) == encrypted

        _lose_the_host(env, ssh_dir)
        fetched = run_playbook("fetch_backup", env.host_vars, {"history": True}, groups=groups)
        assert "The recovery window of platform fetched from vault" in fetched.output
        restored = run_playbook("restore_full", env.host_vars, {"target_time": iso(target)}, groups=groups)
        assert state(env) == expected, restored.output[-3000:]
        assert not env.platform.cluster.sql("SELECT pg_is_in_recovery()")[0][0]

        # The replacement archives on, into the fetched repository and to the vault; a second fetch changes nothing.
        env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM4', 'buy', 3, 'new host')")
        run_playbook("archive", env.host_vars, groups=groups)
        again = run_playbook("fetch_backup", env.host_vars, {"history": True}, groups=groups)
        assert "fetched before" in again.output and again.changed_tasks == []
        if encrypted:
            _refused_fetches(env, vault, name, ssh_dir)
    finally:
        shutil.rmtree(os.path.join(vault["store"], name), ignore_errors=True)
