#!/usr/bin/env bash
# Installs what nixpipe's build, tests and demo need on a Debian machine.
# Idempotent: installs only what is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup: the testbed needs root (it makes namespaces and bind mounts); run as root" >&2
    exit 1
fi

packages=(nix-bin openssh-server openssh-client sudo busybox-static util-linux util-linux-extra procps zstd time
    debootstrap systemd-container tcsh fish shellcheck)
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

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) and put ~/.cargo/bin on PATH" >&2
    exit 1
fi
cargo fetch --locked --quiet
