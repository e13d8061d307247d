# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database server as a service manager runs it (systemd: its unit, such as Debian's ``postgresql@15-main``;
compose: its service's container), for continuous protection: archiving's restart and a physical restore stop and
start it through the manager."""

from __future__ import annotations

import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import remove_quietly
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import (
    PG_BIN,
    PgCtlServer,
    fatal_line,
    os_user_entry,
    read_postmaster_pid,
)

MANAGER_LOG_LINES = 50


class ServiceServer(PgCtlServer):
    """The cluster of ``data_dir`` run by ``service`` of ``manager`` (platform.services). psql and pg_isready reach it
    over the socket its postmaster.pid names, as for a cluster run with pg_ctl. Its log is ``log_file`` when given
    (Debian: ``/var/log/postgresql/postgresql-15-main.log``), else the manager's last lines (the journal)."""

    def __init__(self, manager, service, data_dir, os_user="postgres", bin_dir=PG_BIN, timeout=120, log_file=None):
        super().__init__(data_dir, os_user=os_user, bin_dir=bin_dir, log_file=log_file or None, timeout=timeout)
        self.manager, self.service, self.own_log = manager, service, bool(log_file)

    def _active(self):
        return self.manager.status([self.service])[self.service]["running"]

    def is_running(self):
        return self._active() and read_postmaster_pid(self.data_dir) is not None

    def log_size(self):
        return super().log_size() if self.own_log else 0

    def log_since(self, offset):
        return super().log_since(offset) if self.own_log else self.manager.logs(self.service, MANAGER_LOG_LINES)

    def stop(self, mode="fast"):
        """Stop the service (the manager's own shutdown; ``mode`` is pg_ctl's and does not apply) and wait until
        the postmaster has exited; False when it was not running."""
        if not self._active():
            return False
        self.manager.apply("stop", [self.service])
        self._wait(lambda: read_postmaster_pid(self.data_dir) is None, "the postmaster of %s to exit" % self.data_dir)
        return True

    def start(self):
        """Start the service and wait until the server accepts connections; a server that exits while starting
        raises with its log's FATAL line. False when it ran already."""
        if self.is_running():
            return False
        offset = self.log_size()
        self.manager.apply("start", [self.service])
        self._wait(self.accepts_connections, "%s to accept connections" % self.data_dir, offset)
        return True


class ComposeServer(ServiceServer):
    """The cluster a compose service runs in its container, its data directory on this host at ``data_dir`` (the
    data volume's host path, e.g. ``/var/lib/docker/volumes/christmas_pgdata/_data/pgdata``). Stopped and started as
    that service. psql, pg_isready and pgBackRest's commands that need the server (stanza-create, check, backup,
    archive-push, archive-get) run inside the container as ``os_user`` (docker or podman exec), by name from the
    image's PATH, as the official images have them. So the repository must be mounted into the container at its own
    path, and ``os_user`` on this host must have the uid the data directory belongs to: the server writes WAL into
    the repository that this host's pgBackRest reads, and a restore here writes files the server reads. Its log is
    the container's."""

    runs_here = False

    def _container(self):
        return self.manager.service_container(self.service)

    def in_server(self, argv):
        return self.manager.exec_argv(self.service, self.os_user, argv)

    def tool_argv(self, program, *args):
        return self.in_server([program, *args])

    def inside(self, path):
        """``path`` of this host as the container sees it, through its mounts; None when it is not mounted."""
        path = os.path.abspath(path)
        for source, destination in sorted(self._container()["mounts"], key=lambda mount: -len(mount[0])):
            below = os.path.relpath(path, os.path.realpath(source)) if source else ".."
            if below == ".":
                return destination
            if not below.startswith(".."):
                return os.path.join(destination, below)
        return None

    @property
    def pg1_path(self):
        """None while the service has no container yet (a replacement host before the platform's first up)."""
        if not any(container["service"] == self.service for container in self.manager.containers()):
            return None
        found = self.inside(self.data_dir)
        if found is None:
            raise RecoveryError("christmas_pg_data_dir %s is not mounted into the container of compose service %s: "
                                "give the data volume's host path" % (self.data_dir, self.service))
        return found

    def problem(self, paths):
        try:
            if self.inside(self.data_dir) is None:
                return ("christmas_pg_data_dir %s is not in a volume of the container of compose service %s: give "
                        "the data volume's host path" % (self.data_dir, self.service))
            for path in paths:
                if self.inside(path) != os.path.abspath(path):
                    return ("%s is not mounted into the container of compose service %s at the same path, where the "
                            "server's archive_command writes WAL (compose volumes: - %s:%s)" % (
                                path, self.service, path, path))
        except RecoveryError as err:
            return str(err)
        owner, user = _owner_uid(self.data_dir), os_user_entry(self.os_user).pw_uid
        if owner is not None and owner != user:
            return ("the data directory %s belongs to uid %d (the container's database user) but christmas_pg_os_user "
                    "%s is uid %d on this host: set christmas_pg_os_user to this host's user of uid %d" % (
                        self.data_dir, owner, self.os_user, user, owner))
        return None

    def stop(self, mode="fast"):
        """Stop the service (the container's stop signal; ``mode`` does not apply). Once the container has stopped
        its postmaster is gone with it: a postmaster.pid a killed one left is removed (pgBackRest refuses to restore
        beside one). False when it was not running."""
        running = self._active()
        if running:
            self.manager.apply("stop", [self.service])
        remove_quietly(os.path.join(self.data_dir, "postmaster.pid"))
        return running

    def start(self):
        """Start the service and wait until the server accepts connections; a container that exits while starting
        raises with its log's FATAL line. False when it ran already."""
        if self.is_running():
            return False
        try:
            self.manager.apply("start", [self.service])
        except RecoveryError as err:
            raise RecoveryError("%s; server log: %s" % (err, fatal_line(self.log_since(0)))) from None
        self._wait(self._started, "compose service %s to accept connections" % self.service)
        return True

    def _started(self):
        if not self._active():
            raise RecoveryError("PostgreSQL of compose service %s exited while starting: %s" % (
                self.service, fatal_line(self.log_since(0))))
        return read_postmaster_pid(self.data_dir) is not None and self.accepts_connections()


def _owner_uid(path):
    try:
        return os.stat(path).st_uid
    except FileNotFoundError:
        return None
