"""What the point-in-time tests share: a protected platform (a cluster run from its data directory, Redis with its
config file, the config tree, after backup.yml), the changes made before and after a target second, and the clock."""

from __future__ import annotations

import datetime
import os
import secrets
import time
from types import SimpleNamespace

from conftest import connection_vars, redis_state, seed_redis, settings_into_conf, tree_state

TOKYO = datetime.timezone(datetime.timedelta(hours=9))


def wait_past(moment):
    """Poll the clock until it has passed ``moment`` (Unix seconds)."""
    deadline = time.monotonic() + (moment - time.time()) + 5
    while time.time() <= moment:
        assert time.monotonic() < deadline, "the clock never passed %s" % moment
        time.sleep(0.02)


def second_boundary():
    """A whole second T with nothing written in it yet: every change made before the call is before T, every change
    made after it is in a later second (Redis's AOF counts whole seconds)."""
    target = int(time.time()) + 1
    wait_past(target + 1)
    return target


def iso(epoch, zone=TOKYO):
    return datetime.datetime.fromtimestamp(epoch, zone).isoformat()


def state(env):
    return {"db": env.platform.snapshot(), "redis": redis_state(env.redis), "config": tree_state(env.config_dir)}


def protect(platform, make_redis, config_dir, tmp_dir, run_playbook, groups=None, env=None, **extra_vars):
    """The platform (a cluster run from its data directory, Redis with its config file, the config tree) after
    backup.yml with continuous protection (``groups``: more inventory groups, such as vaults; ``env``: more of
    ansible-playbook's environment)."""
    os.chmod(tmp_dir, 0o711)  # the server's archive_command must reach the repository below it
    settings_into_conf(platform.cluster, extra_vars.get("christmas_pg_config_dir"))
    server = make_redis(password=secrets.token_urlsafe(12))
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = dict(connection_vars(platform, server, config_dir, backup_dir),
                     christmas_pg_data_dir=platform.cluster.data, **extra_vars)
    first_backup_at = time.time()
    first = run_playbook("backup", host_vars, groups=groups, env=env)
    return SimpleNamespace(platform=platform, redis=server, config_dir=config_dir, backup_dir=backup_dir,
                           host_vars=host_vars, first=first, tmp_dir=tmp_dir, first_backup_at=first_backup_at)


def changes_before(env):
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 7, 'before T')")
    env.platform.sql("UPDATE positions SET qty = qty + 1 WHERE symbol = 'SYM3'")
    env.redis.client(0).set("fill:before", "100@101.5")
    env.redis.client(3).delete("cache:7")
    with open(os.path.join(env.config_dir, "limits.yml"), "w", encoding="utf-8") as handle:
        handle.write("max_position: 100\n")


def changes_after(env):
    env.platform.sql("DELETE FROM orders WHERE note = 'before T'")
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM2', 'sell', 9, 'after T')")
    env.platform.sql("DELETE FROM positions")
    env.redis.client(0).delete("fill:before")
    env.redis.client(0).set("fill:after", "5@99")
    os.unlink(os.path.join(env.config_dir, "limits.yml"))
    with open(os.path.join(env.config_dir, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("bad_deploy: true\n")
