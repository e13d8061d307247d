#!/bin/sh
# PostgreSQL 15 for the platform (TimescaleDB is not packaged in Debian; the lab runs plain PostgreSQL). On an empty
# volume: initdb, then the platform role, database and schema, as the TimescaleDB image does with POSTGRES_USER,
# POSTGRES_DB and its init scripts. Passwords come from files in /run/christmas, never from the command line.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=/var/lib/postgresql/data/pgdata
SOCK=/run/postgresql
mkdir -p "$SOCK" /var/lib/postgresql/data
chown postgres:postgres "$SOCK" /var/lib/postgresql/data
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  install -m 0600 -o postgres -g postgres /run/christmas/db_admin_password "$SOCK/admin.pw"
  install -m 0600 -o postgres -g postgres /run/christmas/db_password "$SOCK/christmas.pw"
  as_postgres "$BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer \
    --auth-host=scram-sha-256 --pwfile="$SOCK/admin.pw" >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -k $SOCK" start >/dev/null
  as_postgres "$BIN/psql" -h "$SOCK" -U postgres -v ON_ERROR_STOP=1 -q <<SQL
\\set pw \`cat $SOCK/christmas.pw\`
CREATE ROLE christmas LOGIN PASSWORD :'pw';
CREATE DATABASE christmas OWNER christmas;
\\connect christmas
SET ROLE christmas;
\\i /opt/christmas/schema.sql
SQL
  rm -f "$SOCK/admin.pw" "$SOCK/christmas.pw"
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -w -m fast stop >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA" -k "$SOCK" \
  -c listen_addresses='*'
