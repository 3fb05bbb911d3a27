#!/usr/bin/env bash
# make demo: deploy the example configuration to a throwaway host named
# web1 (booting real systemd, with its own /nix, hostname and sshd on
# loopback), then show the host. Runs inside `nixpipe-testbed --systemd web1
# -- ...`, which sets HOST_WEB1.
set -euo pipefail

config="$FIXTURES/web1/configuration.nix"
port=${HOST_WEB1##*:}
# shellcheck disable=SC2086 # NIX_SSHOPTS is a list of words, as Nix splits it
on_host() { ssh $NIX_SSHOPTS -p "$port" root@127.0.0.1 "$@"; }

say() { printf '\n\033[1m%s\033[0m\n' "$*" >&2; }

say "\$ nixpipe-eval -f $config --nixpkgs \$NIXPKGS | nixpipe-copy --to $HOST_WEB1 | nixpipe-activate --on $HOST_WEB1 switch"
nixpipe-eval -f "$config" --nixpkgs "$NIXPKGS" \
    | nixpipe-copy --to "$HOST_WEB1" \
    | nixpipe-activate --on "$HOST_WEB1" switch

say "On the host $(on_host hostname): the system profile's generations"
on_host nix-env --profile /nix/var/nix/profiles/system --list-generations
say "What switch-to-configuration was asked to do"
on_host cat /var/lib/nixpipe-testbed/switch.log
say "It ran as a transient systemd unit, detached from the ssh session:"
on_host "journalctl --no-pager -o short -u 'nixpipe-activate-*'"
say "Deploying to the wrong host is refused, and changes nothing:"
toplevel=$(on_host readlink -f /nix/var/nix/profiles/system)
printf 'db1\t%s\n' "$toplevel" | nixpipe-activate --on "$HOST_WEB1" switch || echo "(exit $?)" >&2

say "A system whose switch fails is rolled back, and the exit status says so:"
bad=$(nix-build --no-out-link -I nixpkgs="$NIXPKGS" '<nixpkgs/nixos>' -A system \
    --arg configuration "{ imports = [ $config ]; testbed.switchFails = true; }" 2>/dev/null)
nixpipe-copy --to "$HOST_WEB1" "$bad" >/dev/null
printf 'web1\t%s\n' "$bad" | nixpipe-activate --on "$HOST_WEB1" switch || echo "(exit $?)" >&2
say "The profile is back on generation 1, and that system runs again:"
on_host nix-env --profile /nix/var/nix/profiles/system --list-generations
on_host readlink /run/current-system
