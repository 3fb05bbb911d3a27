# Runs on the relay of `nixpipe-copy --via HOST`, as
#   sh -c SCRIPT nixpipe-relay DESTINATION PORT PATH...
# Makes the closures of the PATHs, read from this host's store, valid on
# DESTINATION (user@host as the deployer wrote it, resolved by this host's
# own ssh configuration), at PORT unless it is empty. One stream for all
# missing paths (nix-store --export sorts them references first), so the
# relay pays no round trip per path.
#
# stdin: the known_hosts lines of the keys the deployer trusts for the
# target, under the alias nixpipe-target: the target is checked with the
# deployer's trust, never with host key checking off.
#
# Prints the closure's size in paths, then "PATH NARSIZE" for each path it
# sent. Exit 3: the target could not be reached from here.
set -eu
destination=$1 port=$2
shift 2
scratch=$(mktemp -d)
cat >"$scratch/known_hosts"

# Both steps share one connection: one handshake, one login with the
# forwarded agent.
on_target() {
  ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o HostKeyAlias=nixpipe-target \
    -o UserKnownHostsFile="$scratch/known_hosts" -o GlobalKnownHostsFile=/dev/null \
    -o ControlMaster=auto -o ControlPath="$scratch/target" -o ControlPersist=yes \
    ${port:+-p "$port"} "$@"
}
# Under set -e a failing command in the trap would replace the exit status.
trap 'on_target -O exit -- "$destination" 2>/dev/null || true; rm -rf "$scratch"' EXIT

# ssh's own failures exit 255: tell them from the target's nix-store.
unreachable() {
  [ "$1" = 255 ] && exit 3
  exit "$1"
}

closure=$(nix-store --query --requisites "$@")
echo "$closure" | wc -l
missing=$(on_target -- "$destination" nix-store --check-validity --print-invalid $closure) || unreachable $?
[ -n "$missing" ] || exit 0
nix-store --export $missing | on_target -- "$destination" nix-store --import >/dev/null || unreachable $?
printf '%s\n' $missing >"$scratch/sent"
nix-store --query --size $missing | paste -d ' ' "$scratch/sent" -
