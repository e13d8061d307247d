#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_replication
short_description: Streaming replication of the local PostgreSQL 15 (primary, hot standby, promotion, fencing)
description:
  - Runs on a database host (as root through C(become), or as the user owning the data directory) and talks to the
    local PostgreSQL as the superuser I(db_admin_user).
  - C(info) reports what the server is, read-only. A server that does not answer is C(role=down), not a failure.
  - C(primary) makes the server ready to be replicated. C(ALTER SYSTEM) sets C(wal_level=replica) (C(logical) is
    kept), I(max_wal_senders), I(max_replication_slots), C(hot_standby=on) and I(listen_addresses), each only when
    the value the server would use after a restart differs; a setting given on the server's command line cannot be
    changed that way and fails the task if it differs. Then C(pg_reload_conf()); C(restart_required) says whether a
    restart is still needed (C(pg_settings.pending_restart)). The role I(replication_user) is created C(LOGIN
    REPLICATION) (never a superuser; an existing superuser of that name is refused) or given its password; the
    password is sent as a SCRAM-SHA-256 verifier computed here, so it is in no statement and no log. One physical
    slot per name in I(slots) is created when missing. pg_hba.conf is not touched (the standbys need a C(host
    replication) line). Refused on a server in recovery.
  - C(standby) makes the local server a hot standby of I(primary_host):I(primary_port). When it answers, is in
    recovery and its wal receiver streams from that host and port (through I(slot_name) when given), nothing
    changes. Otherwise, only when I(data_dir) is empty or missing or I(rebuild=true), it is rebuilt; else the task
    fails with one line saying what is wrong.
  - "A rebuild: checks that the primary answers a replication connection with these credentials and holds the slot
    (before anything local is touched); runs I(stop_command) (a failure is fine when the server is not running) and
    waits until the server is gone; moves the old data directory aside to C(DATA_DIR.pre-rebuild-YYYYMMDDTHHMMSSZ)
    (or removes it with I(keep_old=false)); runs C(pg_basebackup -R -X stream -c fast -S SLOT) as the owner of the
    data directory's parent (through C(runuser) when the module runs as root), the password in an anonymous
    in-memory 0600 password file (never in argv, environment or on disk); writes C(primary_conninfo) (host, port,
    user, password, I(application_name)) into C(postgresql.auto.conf) (0600, in the 0700 data directory); chowns
    the tree to that owner; runs I(start_command); waits up to I(wait_seconds) until the standby streams."
  - C(promoted) promotes the local standby (C(pg_promote)) and returns its new timeline; nothing on a primary.
  - C(fenced) writes C(manual) into I(start_conf) (Debian's C(start.conf); comments kept, the previous content
    returned) so the server does not start by itself as a second primary, then stops it with I(stop_command).
  - Check mode predicts C(changed) and changes nothing (a standby that would be rebuilt is not stopped).
version_added: 0.2.0
author: Christmas platform operations
options:
  state:
    description:
      - C(info), C(primary), C(standby), C(promoted) or C(fenced); see the description.
    type: str
    choices: [info, primary, standby, promoted, fenced]
    default: info
  db_host:
    description:
      - Host name, IP address or unix socket directory of the local PostgreSQL.
    type: str
    default: localhost
  db_port:
    description: Port of the local PostgreSQL.
    type: int
    default: 5432
  db_admin_user:
    description: A superuser of the local PostgreSQL; every connection to it is made as this role.
    type: str
    default: postgres
  db_admin_password:
    description: Password of I(db_admin_user).
    type: str
  pg_bin_dir:
    description:
      - Directory of C(pg_basebackup). By default the one of the primary's major version under
        C(/usr/lib/postgresql/VERSION/bin), then the newest installed one, then C(PATH).
    type: path
  replication_user:
    description: The role standbys replicate as (C(LOGIN REPLICATION), not a superuser).
    type: str
    default: replicator
  replication_password:
    description:
      - Its password. C(state=primary) sets it (needed to create the role); C(state=standby) needs it to rebuild.
        The standby keeps it in C(primary_conninfo) in its C(postgresql.auto.conf).
    type: str
  slots:
    description: Physical replication slots C(state=primary) makes sure of, one per standby (lower case, digits, _).
    type: list
    elements: str
    default: []
  drop_other_slots:
    description:
      - With C(state=primary), drop the physical slots not in I(slots) (an active one fails the task). Never
        otherwise (a forgotten slot keeps WAL on the primary until it is dropped).
    type: bool
    default: false
  max_wal_senders:
    description: C(max_wal_senders) with C(state=primary) (a restart applies it).
    type: int
    default: 10
  max_replication_slots:
    description: C(max_replication_slots) with C(state=primary) (a restart applies it).
    type: int
    default: 10
  listen_addresses:
    description: C(listen_addresses) with C(state=primary) (a restart applies it).
    type: str
    default: "*"
  primary_host:
    description: With C(state=standby), the primary to stream from. Required for C(state=standby).
    type: str
  primary_port:
    description: Port of I(primary_host).
    type: int
    default: 5432
  slot_name:
    description:
      - With C(state=standby), the primary's physical slot this standby uses (C(state=primary) creates it). A
        standby streaming through another slot is unhealthy. Without it, no slot is used.
    type: str
  application_name:
    description:
      - The standby's name in the primary's C(pg_stat_replication), written into C(primary_conninfo) at a
        rebuild. Defaults to the host's short name.
    type: str
  data_dir:
    description:
      - The local cluster's data directory. Its parent's owner (C(postgres)) runs pg_basebackup and owns the tree.
    type: path
    default: /var/lib/postgresql/15/main
  stop_command:
    description:
      - Command that stops the local server, as an argument list (for example C([pg_ctlcluster, "15", main, stop])).
        Required for C(state=standby) and C(state=fenced).
    type: list
    elements: str
  start_command:
    description:
      - Command that starts the local server, as an argument list (for example
        C([pg_ctlcluster, "15", main, start])). Required for C(state=standby).
    type: list
    elements: str
  rebuild:
    description:
      - With C(state=standby), rebuild a standby that is not healthy (its data directory moved aside). Without it,
        only an empty or missing data directory is filled; an unhealthy standby fails the task.
    type: bool
    default: false
  keep_old:
    description: At a rebuild, keep the old data directory (renamed aside) rather than delete it.
    type: bool
    default: true
  wait_seconds:
    description:
      - Seconds to wait for a rebuilt standby to stream, for the server to stop, and for a promotion to finish.
    type: int
    default: 60
  start_conf:
    description: With C(state=fenced), the cluster's Debian C(start.conf), where C(manual) is written.
    type: path
    default: /etc/postgresql/15/main/start.conf
requirements:
  - psycopg2 (psycopg2-binary) on the managed node.
  - PostgreSQL 15 client programs (pg_basebackup) for C(state=standby); C(runuser) when running as root.
attributes:
  check_mode:
    support: full
    details: Every state predicts C(changed) and changes nothing; C(info) only reads.
  diff_mode:
    support: none
notes:
  - The standby's pg_hba.conf and the primary's C(host replication) lines are the caller's to write.
"""

EXAMPLES = r"""
- name: Make the primary ready for its standby
  christmas.recovery.christmas_replication:
    state: primary
    db_admin_password: "{{ christmas_db_admin_password }}"
    replication_password: "{{ christmas_replication_password }}"
    slots: [db2]
  register: primary
  notify: Restart PostgreSQL

- name: Make db2 a hot standby of db1 (rebuilt only when christmas_replica_rebuild is true)
  christmas.recovery.christmas_replication:
    state: standby
    db_admin_password: "{{ christmas_db_admin_password }}"
    primary_host: 10.0.0.1
    slot_name: db2
    replication_password: "{{ christmas_replication_password }}"
    stop_command: [pg_ctlcluster, "15", main, stop]
    start_command: [pg_ctlcluster, "15", main, start]
    rebuild: "{{ christmas_replica_rebuild | default(false) }}"

- name: What is this server now?
  christmas.recovery.christmas_replication:
    state: info
    db_admin_password: "{{ christmas_db_admin_password }}"
  register: replication

- name: Fence the old primary
  christmas.recovery.christmas_replication:
    state: fenced
    stop_command: [pg_ctlcluster, "15", main, stop]

- name: Promote the standby
  christmas.recovery.christmas_replication:
    state: promoted
    db_admin_password: "{{ christmas_db_admin_password }}"
"""

RETURN = r"""
role:
  description: C(primary), C(standby) or C(down) (info, standby; after promotion, C(primary)).
  returned: state is info, standby or promoted
  type: str
in_recovery:
  description: pg_is_in_recovery(); null when down.
  returned: state is info
  type: bool
error:
  description: Why the server counts as down (the connection error).
  returned: state is info and role is down
  type: str
timeline:
  description:
    - On a primary, the timeline of its current WAL (right after a promotion too); on a standby, the timeline of
      its last restartpoint (C(pg_control_checkpoint())).
  returned: state is info (not down) or promoted
  type: int
previous_timeline:
  description: The timeline before the promotion.
  returned: state is promoted
  type: int
lsn:
  description: pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a standby.
  returned: state is info (not down) or promoted
  type: str
system_identifier:
  description: The cluster's system identifier (equal on a primary and its standbys).
  returned: state is info, not down
  type: str
server_version:
  description: The server's version.
  returned: state is info, not down
  type: str
wal_receiver:
  description: "The standby's wal receiver: C(status), C(sender_host), C(sender_port), C(slot_name),
    C(latest_end_lsn); null when it has none."
  returned: on a standby (state info, or standby when healthy)
  type: dict
replay_lag_bytes:
  description: WAL received but not yet replayed, in bytes.
  returned: on a standby (state info, or standby when healthy)
  type: int
replicas:
  description:
    - "One per connected standby (pg_stat_replication): C(application_name), C(client_addr), C(state),
      C(sync_state), C(sent_lsn), C(replay_lsn), C(lag_bytes) (current WAL position minus replay_lsn),
      C(replay_lag_seconds)."
  returned: on a primary with state info
  type: list
  elements: dict
slots:
  description: Physical replication slots, C(slot_name), C(active), C(restart_lsn).
  returned: on a primary with state info
  type: list
  elements: dict
user_databases:
  description:
    - Databases other than postgres, template0 and template1. A primary with none is a cluster as the package made
      it; C(state=standby) builds such a host without I(rebuild).
  returned: on a primary with state info
  type: int
settings_changed:
  description: Settings set by ALTER SYSTEM (or that would be, in check mode).
  returned: state is primary
  type: list
  elements: str
restart_required:
  description: Whether a managed setting waits for a restart of the server (pg_settings.pending_restart).
  returned: state is primary
  type: bool
role_changed:
  description: Whether the replication role was created, or its attributes or password changed.
  returned: state is primary
  type: bool
slots_created:
  description: Slots created.
  returned: state is primary
  type: list
  elements: str
slots_pending:
  description:
    - Slots not created yet because the server cannot hold any before its restart (C(wal_level=minimal) or
      C(max_replication_slots=0) still in effect); the first run after the restart creates them.
  returned: state is primary
  type: list
  elements: str
slots_dropped:
  description: Slots dropped (I(drop_other_slots)).
  returned: state is primary
  type: list
  elements: str
healthy:
  description: Whether the standby streams from the primary (after a rebuild, once it does).
  returned: state is standby
  type: bool
problem:
  description: What was wrong with the standby before a rebuild; null when it was healthy.
  returned: state is standby
  type: str
rebuilt:
  description: Whether the standby was rebuilt with pg_basebackup.
  returned: state is standby
  type: bool
rebuild_seconds:
  description: Seconds the rebuild took, from the primary check to streaming.
  returned: state is standby
  type: float
old_data_dir:
  description: Where the old data directory was moved (kept); null when there was none or I(keep_old=false).
  returned: state is standby, and on a failed rebuild
  type: str
would_move_old_data_dir:
  description: In check mode, whether a rebuild would move a non-empty data directory aside.
  returned: state is standby in check mode, when a rebuild would run
  type: bool
stopped:
  description: Whether the server was running and was stopped.
  returned: state is fenced
  type: bool
start_conf:
  description: The start.conf written.
  returned: state is fenced
  type: str
start_conf_changed:
  description: Whether start.conf was changed to manual.
  returned: state is fenced
  type: bool
previous_start_conf:
  description: Content of start.conf before; null when there was none.
  returned: state is fenced
  type: str
steps:
  description: What was done, with seconds since the start.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.db import failover, replication
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import require_libraries


def local_target(params):
    return PgTarget(host=params["db_host"], port=params["db_port"], dbname="postgres", user=params["db_admin_user"],
                    password=params["db_admin_password"], admin_user=params["db_admin_user"],
                    admin_password=params["db_admin_password"], bin_dir=params["pg_bin_dir"])


def apply(params, check_mode, progress):
    target, state = local_target(params), params["state"]
    if state == "info":
        return replication.server_info(target)
    if state == "primary":
        return replication.ensure_primary(
            target, params["replication_user"], params["replication_password"], params["slots"],
            drop_other_slots=params["drop_other_slots"], max_wal_senders=params["max_wal_senders"],
            max_replication_slots=params["max_replication_slots"], listen_addresses=params["listen_addresses"],
            check_mode=check_mode, progress=progress)
    if state == "standby":
        return replication.ensure_standby(
            target, params["primary_host"], params["primary_port"], params["replication_user"],
            params["replication_password"], params["slot_name"], params["data_dir"], params["stop_command"],
            params["start_command"], rebuild=params["rebuild"], keep_old=params["keep_old"],
            wait_seconds=params["wait_seconds"], application_name=params["application_name"],
            check_mode=check_mode, progress=progress)
    if state == "promoted":
        return failover.promote(target, params["wait_seconds"], check_mode=check_mode, progress=progress)
    return failover.fence(target, params["stop_command"], params["data_dir"], params["start_conf"],
                             wait_seconds=params["wait_seconds"], check_mode=check_mode, progress=progress)


def main():
    argument_spec = {
        "state": {"type": "str", "choices": ["info", "primary", "standby", "promoted", "fenced"], "default": "info"},
        "db_host": {"type": "str", "default": "localhost"},
        "db_port": {"type": "int", "default": 5432},
        "db_admin_user": {"type": "str", "default": "postgres"},
        "db_admin_password": {"type": "str", "no_log": True},
        "pg_bin_dir": {"type": "path"},
        "replication_user": {"type": "str", "default": "replicator"},
        "replication_password": {"type": "str", "no_log": True},
        "slots": {"type": "list", "elements": "str", "default": []},
        "drop_other_slots": {"type": "bool", "default": False},
        "max_wal_senders": {"type": "int", "default": 10},
        "max_replication_slots": {"type": "int", "default": 10},
        "listen_addresses": {"type": "str", "default": "*"},
        "primary_host": {"type": "str"},
        "primary_port": {"type": "int", "default": 5432},
        "slot_name": {"type": "str"},
        "application_name": {"type": "str"},
        "data_dir": {"type": "path", "default": "/var/lib/postgresql/15/main"},
        "stop_command": {"type": "list", "elements": "str"},
        "start_command": {"type": "list", "elements": "str"},
        "rebuild": {"type": "bool", "default": False},
        "keep_old": {"type": "bool", "default": True},
        "wait_seconds": {"type": "int", "default": 60},
        "start_conf": {"type": "path", "default": "/etc/postgresql/15/main/start.conf"},
    }
    module = AnsibleModule(
        argument_spec=argument_spec, supports_check_mode=True,
        required_if=[("state", "standby", ("primary_host", "stop_command", "start_command")),
                     ("state", "fenced", ("stop_command",))],
    )
    require_libraries(module, needs_postgres=True, needs_redis=False)
    run(module, lambda progress: apply(module.params, module.check_mode, progress))


if __name__ == "__main__":
    main()
