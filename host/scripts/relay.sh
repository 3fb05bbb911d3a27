# Runs on the relay of `nixpipe-copy --via HOST`, as
#   relay.sh destination= port= known_as= making_roots= protocol=
# (named arguments: args.sh; their values below by their names in capitals)
# Makes a closure valid on DESTINATION (user@host as the deployer wrote it,
# resolved by this host's own ssh configuration), at PORT unless it is
# empty, from this host's store. KNOWN_AS is the name the deployer's ssh
# looks the target's host key up by. MAKING_ROOTS, unless empty, is the
# command (from the deployer, for the target's login shell) that makes the
# copied records' GC roots there before anything is copied. PROTOCOL:
# daemon copies with `nix copy --to ssh-ng://`, the daemon protocol; serve
# and auto with nix-copy-closure, whichever protocol this host's Nix gives
# it.
#
# It starts while the closure is still being uploaded here: it logs in to
# the target and asks what the target lacks meanwhile, then waits for the
# deployer's word that the upload is done.
#
# stdin, each part ending with an empty line:
# - the known_hosts lines the deployer's ssh has for the target (keys,
#   @revoked and @cert-authority lines), checked under KNOWN_AS: the target
#   is checked with the deployer's trust, never with host key checking off;
# - the closure, a store path per line;
# then "go" once the closure is valid here (end of input: the upload
# failed, and nothing is copied).
#
# Answers with a `closure paths=N` event, then a `sent path=P size=BYTES`
# event per path it sent. Exit 3: the target could not be reached from
# here; exit 4: no go.
set -euf # -f: KNOWN_AS may look like a glob ([127.0.0.1]:2222)
takes destination port known_as making_roots protocol -- "$@"
scratch=$(mktemp -d)

# Reads stdin up to the next empty line (or its end).
part() {
  while IFS= read -r line && [ -n "$line" ]; do printf '%s\n' "$line"; done
}
part >"$scratch/known_hosts"
closure=$(part)

# Every step shares one connection: one handshake, one login with the
# forwarded agent, which goes no further than here (whatever this host's
# ssh configuration says). nix-copy-closure reads them from NIX_SSHOPTS,
# which is split on spaces: mktemp's directory and KNOWN_AS have none.
ssh_options="-o BatchMode=yes -o StrictHostKeyChecking=yes -o HostKeyAlias=$known_as -o ForwardAgent=no \
-o UserKnownHostsFile=$scratch/known_hosts -o GlobalKnownHostsFile=/dev/null \
-o ControlMaster=auto -o ControlPath=$scratch/target -o ControlPersist=yes ${port:+-p $port}"
on_target() {
  # shellcheck disable=SC2086,SC2029 # ssh_options is a list; "$@" is for the target
  ssh $ssh_options "$@"
}
# Under set -e a failing command in the trap would replace the exit status.
trap 'on_target -O exit -- "$destination" 2>/dev/null || true; rm -rf "$scratch"' EXIT

# ssh's own failures exit 255: tell them from the target's nix-store.
unreachable() {
  [ "$1" = 255 ] && exit 3
  exit "$1"
}

emit closure paths="$(echo "$closure" | wc -l)"
# -n: ssh would read the deployer's "go" meant for this script.
# shellcheck disable=SC2086 # one argument per path
# The roots come first, in the same round trip.
missing=$(on_target -n -- "$destination" ${making_roots:+"$making_roots;"} \
    nix-store --check-validity --print-invalid $closure) || unreachable $?
read -r go || exit 4
[ "$go" = go ] || exit 4
[ -n "$missing" ] || exit 0
# nix-copy-closure (or nix copy) streams each missing path with one round
# trip each, over the connection above: on the relay's side of the
# network, round trips are short, and it costs about half the CPU of
# export | import. Signatures are checked by the target where it does not
# trust the user, as with nix-copy-closure.
copy() {
  if [ "$protocol" = daemon ]; then
    # shellcheck disable=SC2086
    nix --extra-experimental-features nix-command copy --no-check-sigs --to "ssh-ng://$destination" $missing
  else
    # shellcheck disable=SC2086
    nix-copy-closure --to "$destination" $missing
  fi
}
NIX_SSHOPTS=$ssh_options copy </dev/null >/dev/null 2>"$scratch/copy.log" || {
  cat "$scratch/copy.log" >&2
  exit 1
}
# shellcheck disable=SC2086
printf '%s\n' $missing >"$scratch/sent"
# shellcheck disable=SC2086
nix-store --query --size $missing | paste "$scratch/sent" - |
    awk -F '\t' '{ printf "nixpipe-event\tsent\tpath=%s\tsize=%s\n", $1, $2 }' >&3
