#!/usr/bin/env bash
# Builds a local, flat Debian repository of podman, podman-compose, runc, python3-apt and their whole dependency
# closure, for "new hosts" of the lab (containers of the lab image) that must install packages without a network,
# and prints its path. Mount it read-only in a container and use it as the only source:
#   deb [trusted=yes] file:/srv/apt-local ./
# The closure is what apt would install on a system with nothing installed (first alternatives, no Recommends), at
# the versions the host's apt lists offer (the host and the lab image are both Debian bookworm). The result is
# cached: a second run with the same packages and the same apt lists only compares a stamp. Needs apt and
# dpkg-scanpackages (Debian package dpkg-dev); downloads with `apt-get download` from the host's mirrors.
# Settings: CHRISTMAS_LAB_APT_REPO (directory, default /var/cache/christmas-lab/apt); arguments replace the default
# package list.
set -euo pipefail

repo=${CHRISTMAS_LAB_APT_REPO:-/var/cache/christmas-lab/apt}
if [ "$#" -gt 0 ]; then
  packages=("$@")
else
  # What provisioning installs that the lab image lacks. netavark + aardvark-dns: the network stack with DNS between
  # compose services (apt would otherwise pick the CNI plugins for container-network-stack, without name
  # resolution); netavark needs iptables but does not depend on it; catatonit for `podman run --init`; python3-apt
  # for Ansible's apt module.
  packages=(podman podman-compose runc netavark aardvark-dns iptables catatonit python3-apt)
fi

command -v dpkg-scanpackages >/dev/null || { echo "apt_repo.sh: dpkg-scanpackages missing (apt-get install dpkg-dev)" >&2; exit 1; }

# The stamp: this script, the package list and the state of the host's apt lists.
stamp=$( {
  sha256sum "$0"
  printf '%s\n' "${packages[@]}"
  find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%f %s %T@\n' | sort
} | sha256sum | cut -c1-64)
if [ -s "$repo/Packages" ] && [ "$(cat "$repo/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$repo"
  exit 0
fi

mkdir -p "$repo"
# One build at a time (parallel test workers); a run that waited finds the stamp written by the other one.
exec 9>"$repo/.lock"
flock 9
if [ -s "$repo/Packages" ] && [ "$(cat "$repo/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$repo"
  exit 0
fi
work=$(mktemp -d /tmp/christmas-lab-apt.XXXXXX)
trap 'rm -rf "$work"' EXIT
: > "$work/status"

# "Inst NAME (VERSION ORIGINS [ARCH])" for each package apt would install onto an empty system.
apt-get install -s -q --no-install-recommends -o Dir::State::status="$work/status" "${packages[@]}" \
  | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([^]]*\)\]).*/\1 \2 \3/p' > "$work/closure"
[ -s "$work/closure" ] || { echo "apt_repo.sh: could not resolve ${packages[*]}" >&2; exit 1; }

declare -A wanted=()
missing=()
while read -r name version arch; do
  file="${name}_${version//:/%3a}_${arch}.deb"
  wanted[$file]=1
  [ -s "$repo/$file" ] || missing+=("$name=$version")
done < "$work/closure"

if [ "${#missing[@]}" -gt 0 ]; then
  echo "apt_repo.sh: downloading ${#missing[@]} packages into $repo" >&2
  mkdir "$work/debs"
  (cd "$work/debs" && apt-get download -q=2 -o APT::Sandbox::User=root "${missing[@]}") >&2
  mv "$work/debs"/*.deb "$repo/"
fi
# Versions the closure no longer needs.
for path in "$repo"/*.deb; do
  [ -e "$path" ] || continue
  [ -n "${wanted[$(basename "$path")]:-}" ] || rm -f "$path"
done

(cd "$repo" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null) > "$work/Packages"
mv "$work/Packages" "$repo/Packages"
echo "$stamp" > "$repo/.stamp"
echo "$repo"
