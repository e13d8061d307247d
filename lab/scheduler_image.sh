#!/usr/bin/env bash
# Builds the lab image of a scheduling host and prints its name: the lab image (lab/image.sh) plus systemd as init,
# cron and logrotate, installed offline from a local repository of Debian packages (lab/apt_repo.sh, in its own
# directory). Started with `podman run --systemd=always IMAGE /sbin/init` it boots systemd (sshd and cron as
# services); started with another command it is a host without an init system that still has crontab and logrotate.
# The tag is a hash of the lab image's id and this script; an existing image is reused.
set -euo pipefail
cd "$(dirname "$0")"
export CONTAINERS_CONF="$PWD/containers.conf"

PACKAGES=(systemd systemd-sysv cron logrotate)
base=$(bash image.sh | tail -n 1)
tag=$( { podman image inspect --format '{{.Id}}' "$base"; sha256sum scheduler_image.sh; } | sha256sum | cut -c1-12)
image="localhost/christmas-lab-scheduler:$tag"

exec 9>/var/tmp/christmas-lab-scheduler-image.lock
flock 9
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
repo=$(CHRISTMAS_LAB_APT_REPO=${CHRISTMAS_LAB_SCHEDULER_APT_REPO:-/var/cache/christmas-lab/apt-scheduler} \
  bash apt_repo.sh "${PACKAGES[@]}" | tail -n 1)
echo "lab scheduler image: installing ${PACKAGES[*]} into $base" >&2
builder="christmas-lab-scheduler-build-$$"
trap 'podman rm -f -t 0 "$builder" >/dev/null 2>&1 || true' EXIT
# Host keys made once here: under systemd, Debian's ssh.service does not make them.
podman run --name "$builder" --pull never --volume "$repo:/srv/apt-local:ro" "$base" bash -c "
  set -e
  mv /etc/apt/sources.list /etc/apt/sources.list.lab
  echo 'deb [trusted=yes] file:/srv/apt-local ./' > /etc/apt/sources.list
  apt-get update -q=2 -o Dir::Etc::sourceparts=-
  DEBIAN_FRONTEND=noninteractive apt-get install -q=2 -y --no-install-recommends -o Dir::Etc::sourceparts=- \
    ${PACKAGES[*]} >/dev/null
  mv /etc/apt/sources.list.lab /etc/apt/sources.list
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  systemctl enable ssh cron >/dev/null 2>&1
  ssh-keygen -A >/dev/null" >&2
podman commit --quiet --change 'CMD ["/sbin/init"]' "$builder" "$image" >/dev/null
# Older builds are of no further use.
podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/christmas-lab-scheduler:' | grep -vx "$image" \
  | xargs -r podman rmi -f >/dev/null 2>&1 || true
echo "$image"
