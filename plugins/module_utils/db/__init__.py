# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database component: PostgreSQL connections, dump and restore with the globals a new host needs, TimescaleDB,
streaming replication."""
