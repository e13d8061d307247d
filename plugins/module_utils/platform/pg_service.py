# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database server as a service manager runs it (systemd: its unit, such as Debian's ``postgresql@15-main``),
for continuous protection: archiving's restart and a physical restore stop and start it through the manager."""

from __future__ import annotations

from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import (
    PG_BIN,
    PgCtlServer,
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
