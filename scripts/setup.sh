#!/usr/bin/env bash
# Installs what nixpipe's build, tests and demo need on a Debian machine.
# Idempotent: installs only what is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup: the testbed needs root (it makes namespaces and bind mounts); run as root" >&2
    exit 1
fi

packages=(nix-bin openssh-server openssh-client sudo busybox-static util-linux util-linux-extra procps zstd time
    debootstrap systemd-container tcsh fish shellcheck qemu-user-static binfmt-support
    qemu-system-x86 vde2 xz-utils tmux
    ovmf systemd-boot-efi grub-pc-bin dosfstools mtools e2fsprogs fdisk)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's nix-bin leaves /nix to the first Nix command; the testbed's hosts
# mount their own stores on it, so it must be there before any of them starts.
mkdir -p /nix
# Nix makes its state (the database, gcroots/profiles) the first time a
# command opens the store, and the tests' first Nix commands, started at
# once, race at it (Nix 2.8: "creating symlink from
# '/nix/var/nix/gcroots/profiles' to '/nix/var/nix/profiles': File exists"):
# made once here.
nix-store --init 2>/dev/null

# aarch64 emulation, for the Raspberry Pi scenarios: qemu registered with
# binfmt_misc (Debian's qemu-user-static registers with the F flag: the
# interpreter is opened once, so it runs in every namespace and root), and
# Debian's static busybox for arm64, the stand-in nixpkgs' builder there.
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
[ -e "$binfmt/qemu-aarch64" ] || update-binfmts --enable qemu-aarch64
busybox_arm64=/var/cache/nixpipe-testbed/aarch64-linux/busybox
if [ ! -x "$busybox_arm64" ]; then
    echo "setup: fetching busybox-static:arm64" >&2
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
        apt-get update -qq
    fi
    deb=$(mktemp -d)
    (cd "$deb" && apt-get download -qq -o APT::Sandbox::User=root busybox-static:arm64 && dpkg -x busybox-static_*.deb x)
    mkdir -p "${busybox_arm64%/*}"
    # bin/ up to bookworm, usr/bin/ from trixie on (merged /usr).
    found=$(find "$deb/x" -path '*bin/busybox' -type f | head -n 1)
    [ -n "$found" ] || { echo "setup: no bin/busybox in busybox-static:arm64" >&2; exit 1; }
    install -m 755 "$found" "$busybox_arm64.new"
    mv "$busybox_arm64.new" "$busybox_arm64"
    rm -rf "$deb"
fi

# The testbed's real VMs: Debian's kernel and an initrd, made once
# (scripts/vm-kit.sh; nothing goes into /boot).
bash "$(dirname "$0")/vm-kit.sh" /var/cache/nixpipe-testbed/vm

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) and put ~/.cargo/bin on PATH" >&2
    exit 1
fi
cargo fetch --locked --quiet
