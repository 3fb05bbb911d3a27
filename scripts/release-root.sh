#!/usr/bin/env bash
# release-root.sh DIST DIR: a Debian root of release DIST (bookworm, trixie,
# sid) in DIR with that release's Nix and what a testbed host runs: OpenSSH,
# sudo, doas, util-linux, zstd, systemd (and polkit, for run0) for hosts
# booted under systemd-nspawn, tcsh and fish as other login shells, and
# qemu for the MicroVMs a host boots, and the boot loaders' tools a VM
# guest uses (bootctl; grub-reboot, grub-editenv) (version 5). A
# DIR made before stays, unless it is of an older version; DIR appears whole
# or not at all.
set -euo pipefail

dist=${1:?usage: release-root.sh DIST DIR} out=${2:?usage: release-root.sh DIST DIR}
# Written last, once the root has all it needs (tests/src/release.rs:
# ROOT_VERSION): a root that has it is kept.
version=.nixpipe-testbed-root-5
[ ! -e "$out/$version" ] || exit 0
packages='nix-bin openssh-server openssh-client sudo util-linux procps zstd systemd systemd-sysv dbus libpam-systemd polkitd opendoas tcsh fish qemu-system-x86 grub2-common'
# bootctl: in systemd-boot up to bookworm, in systemd-boot-tools since trixie.
case $dist in
    bookworm) packages="$packages systemd-boot" ;;
    *) packages="$packages systemd-boot-tools" ;;
esac

# The machine's own Debian mirror, as apt knows it (deb822 or one-line sources).
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /^http/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
mirror=${NIXPIPE_DEBIAN_MIRROR:-$mirror}
[ -n "$mirror" ] || { echo "release-root: no Debian mirror in apt's sources; set NIXPIPE_DEBIAN_MIRROR" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "release-root: debootstrap is missing (make test installs it)" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$out.new.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT
log=$tmp.log
echo "release-root: debootstrap $dist into $out (once, a few minutes)" >&2
# In a mount namespace of its own, so that the mounts of /proc and /dev in
# the root never reach the machine and go when it ends. debootstrap's own
# dependency resolution trips over sid's packages: it makes a minimal root,
# apt installs the rest in it.
install_in_root() {
    set -e
    cp -L /etc/resolv.conf "$1/etc/resolv.conf"
    # Packages installed here must not start daemons on the machine's network.
    printf '#!/bin/sh\nexit 101\n' >"$1/usr/sbin/policy-rc.d"
    chmod +x "$1/usr/sbin/policy-rc.d"
    # A mirror that is a snapshot serves Release files past their Valid-Until
    # (sid's expire in a week); apt would refuse them.
    echo 'Acquire::Check-Valid-Until "false";' >"$1/etc/apt/apt.conf.d/99nixpipe-testbed"
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    chroot "$1" apt-get update -qq
    # shellcheck disable=SC2086 # $2: a list of packages
    DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -qq --no-install-recommends $2
    umount -R "$1/dev" "$1/proc"
}
if ! unshare --mount --propagation private \
    bash -c "debootstrap --variant=minbase '$dist' '$tmp' '$mirror' && $(declare -f install_in_root); install_in_root '$tmp' '$packages'" \
    >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    echo "release-root: making the $dist root failed; see $log" >&2
    exit 1
fi
chroot "$tmp" apt-get clean
# Every host brings its own host keys and configuration.
rm -f "$tmp"/etc/ssh/ssh_host_*
chmod 755 "$tmp"
echo "tcsh fish" >"$tmp/$version"
# A root of an older version goes; nothing uses it while this one is made.
rm -rf --one-file-system "$out"
mv "$tmp" "$out"
trap - EXIT
rm -f "$log"
# shellcheck disable=SC2016 # dpkg-query's own ${Version}
echo "release-root: $dist ready: nix-bin $(chroot "$out" dpkg-query -W -f '${Version}' nix-bin)" >&2
