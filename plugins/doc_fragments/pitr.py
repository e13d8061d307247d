# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  pitr_repo:
    description:
      - The pgBackRest repository (posix) of the database's physical backups and archived WAL. It is owned by
        I(pg_os_user), mode 0700; the backup directory above it is made traversable for that user's group (0710).
    type: path
    required: true
  pitr_stanza:
    description: The pgBackRest stanza of the platform's database.
    type: str
    default: christmas
  pitr_source:
    description:
      - Where the database's history is read from for a window or a restore to a point in time. C(local) is
        I(pitr_repo) (pgBackRest's repo1); C(s3) is the bucket's copy (repo2, under C(S3_PREFIX/pgbackrest)), which
        needs I(s3_endpoint).
      - With I(s3_endpoint) set, WAL is always archived into both, and a backup takes a physical backup into both.
        While the bucket cannot be reached, no physical backup is taken (pgBackRest needs every repository for one);
        the other components are protected as usual, and the run reports the endpoint.
    type: str
    choices: [local, s3]
    default: local
  s3_retention_days:
    description:
      - Days of full backups the bucket's repository keeps (repo2's C(repo2-retention-full), by time); by default
        as many as the local one. Longer while the newest proven set is older.
    type: int
  pitr_dir:
    description:
      - Where Redis's shipped AOF files (C(PITR_DIR/redis)) and the config tree's versions (C(PITR_DIR/config)) are
        kept.
    type: path
    required: true
  pg_data_dir:
    description:
      - The database server's data directory. With I(service_manager=none) the server is the cluster run from this
        directory, stopped and started with C(pg_ctl -D) as I(pg_os_user), its port, sockets and listen address
        taken from its own C(postgresql.conf). With I(service_manager=systemd) it is stopped and started through its
        unit I(db_service) (Debian's C(postgresql@15-main) runs C(/var/lib/postgresql/15/main)).
      - With I(service_manager=compose) it is the host path of the data directory inside the database's volume
        (C(docker volume inspect) or C(podman volume inspect) name the volume's C(Mountpoint)), and the server is
        the compose service I(db_service) of I(compose_dir). psql, pg_isready, pg_waldump and the pgBackRest
        commands that need the server run inside its container, by name from the image's PATH (the official images
        have them there). The repository and its C(.conf.d) directory (the backup directory holds both) must be
        mounted into that container at the same paths, and I(pg_os_user) must be this host's user of the uid that
        owns the data directory. Otherwise continuous protection of the database is off, and why is said.
      - Without it, continuous protection of the database is off.
    type: path
  pg_config_dir:
    description:
      - With I(service_manager=none), the cluster's config directory when its C(postgresql.conf) is not in
        I(pg_data_dir) (Debian's C(/etc/postgresql/15/main), whose C(data_directory) names I(pg_data_dir)); the
        cluster is then stopped and started with C(pg_ctl -D) this directory.
    type: path
  pg_log_file:
    description:
      - With I(service_manager=systemd), the server's log file (Debian's C(/var/log/postgresql/postgresql-15-main.log));
        by default the unit's journal. It explains a start that failed.
    type: path
  pg_os_user:
    description: The operating system user the database server and pgBackRest run as.
    type: str
    default: postgres
  service_manager:
    description: How the database server is stopped and started for archiving's restart and a physical restore.
    type: str
    choices: [none, systemd, compose]
    default: none
  db_service:
    description: The database's systemd unit (or compose service).
    type: str
    default: timescaledb
  compose_dir:
    description: With I(service_manager=compose), the directory of the platform's compose file.
    type: path
  compose_command:
    description: With I(service_manager=compose), the compose command (C(docker compose), C(podman-compose)).
    type: str
    default: docker compose
  service_timeout:
    description: Seconds to wait for the database server to stop, start, and end its recovery.
    type: int
    default: 120
  redis_data_dir:
    description:
      - Host path of Redis's data directory (its C(dir)); by default what the server says, right for a Redis on this
        host.
    type: path
  pitr_encryption:
    description:
      - Encrypt the pgBackRest repository (C(repo1-cipher-type=aes-256-cbc)) with a cipher pass derived from
        I(encryption_key) or I(encryption_key_file), as with C(christmas_encryption). The pass is written only into
        the repository's config file (0600). A repository keeps its encryption; turning this on or off for an
        existing one is refused.
    type: bool
    default: false
"""
