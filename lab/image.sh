#!/usr/bin/env bash
# Builds the lab image from Debian packages (debootstrap) and prints its name. The tag is a hash of this script, so
# the image is rebuilt only when the package list or the build steps change; an existing image is reused.
set -euo pipefail
cd "$(dirname "$0")"
export CONTAINERS_CONF="$PWD/containers.conf"

# debootstrap does not resolve virtual packages: python3-cryptography needs python3-cffi-backend named.
PACKAGES=python3,python3-psycopg2,python3-cryptography,python3-cffi-backend,python3-crcmod,python3-yaml,postgresql-15,pgbackrest,redis-server,openssh-server,sudo,iproute2,procps,keepalived,rsync,git
MIRROR=${CHRISTMAS_LAB_MIRROR:-http://deb.debian.org/debian}
image="localhost/christmas-lab:$(sha256sum image.sh | cut -c1-12)"

# One build at a time: parallel test runs wait for the first one's image instead of building it again.
exec 9>/var/tmp/christmas-lab-image.lock
flock 9
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
rootfs=$(mktemp -d /var/tmp/christmas-lab-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "lab image: debootstrap into $rootfs (about 90 s)" >&2
# Package-installed PostgreSQL must not create a cluster: the lab's services create their own.
mkdir -p "$rootfs/etc/postgresql-common"
echo "create_main_cluster = false" > "$rootfs/etc/postgresql-common/createcluster.conf"
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" >/dev/null; then
  tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2 || true
  exit 1
fi
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/run/sshd"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
echo "lab image: importing $image" >&2
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' \
  --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
# Older builds of the lab image are of no further use.
podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/christmas-lab:' | grep -vx "$image" \
  | xargs -r podman rmi -f >/dev/null 2>&1 || true
echo "$image"
