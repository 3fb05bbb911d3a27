#!/usr/bin/env bash
# make demo-pi: the Raspberry Pi workflow on a throwaway aarch64 host named
# pi (its Nix says aarch64-linux; its programs run under qemu through
# binfmt_misc). The system is built here through qemu-user, bundled with its
# pinned nixpkgs, copied, and switched there by the deploy user with one sudo
# password; nothing is built on the Pi. Runs inside `nixpipe-testbed --aarch64
# pi -- ...`, which sets HOST_PI and lets this machine's Nix build for
# aarch64-linux (extra-platforms).
set -euo pipefail

config_dir="$FIXTURES/pi"
port=${HOST_PI##*:}
# shellcheck disable=SC2086 # NIX_SSHOPTS is a list of words, as Nix splits it
on_host() { ssh $NIX_SSHOPTS -p "$port" root@127.0.0.1 "$@"; }

say() { printf '\n\033[1m%s\033[0m\n' "$*" >&2; }

# A Pi set up by hand: deploy is a trusted Nix user, and sudo asks for its
# password.
on_host "echo 'trusted-users = root deploy' >> /etc/nix/nix.conf; nix-daemon </dev/null >/var/lib/nix-daemon.log 2>&1 &
    while [ ! -S /nix/var/nix/daemon-socket/socket ]; do sleep 0.1; done"
pi=deploy@127.0.0.1:$port
password="correct horse battery staple"

pipeline="nixpipe-eval --system aarch64-linux -f $config_dir/configuration.nix --nixpkgs \"\$NIXPKGS\" \
| nixpipe-bundle --config $config_dir --nixpkgs \"\$NIXPKGS\" | nixpipe-copy --to $pi \
| nixpipe-activate --on $pi --ask-sudo-password switch"
say "\$ ${pipeline//|/$'\n    |'}"
say "(deploy's sudo password on pi is \"$password\")"
started=$(date +%s.%N)
if [ -t 0 ]; then
    bash -c "$pipeline"
else
    # No terminal to type on (make demo-pi in a script): one is made, and the
    # password typed into it once.
    printf '%s\n' "$password" | script --quiet --echo never --return --command "$pipeline" /dev/null
fi
say "The whole pipeline took $(echo "$(date +%s.%N) - $started" | bc) s"

bundle=$(on_host readlink /etc/nixos/current-configuration)
say "On pi: /etc/nixos/current-configuration -> $bundle"
on_host ls -l /etc/nixos/current-configuration/
say "What switch-to-configuration was asked to do, and on what machine it ran (uname -m):"
on_host cat /var/lib/nixpipe-testbed/switch.log
say "bin/switch runs with the system's own shell, built for the Pi:"
on_host "head -n1 $bundle/bin/switch; od -An -tx1 -j18 -N2 \$(readlink -f \$(head -n1 $bundle/bin/switch | cut -c3-)) | sed 's/^ *b7 00$/ELF machine 0xb7: aarch64/'"
say "Nothing was built on pi: its store holds $(on_host "ls /nix/store | grep -c '[.]drv\$' || true") .drv files"
