#!/usr/bin/env bash
# make demo-vms: the nixos-build-vms workflow with real VMs (qemu), then an
# in-place update of the running network. Runs inside `nixpipe-testbed --vms
# -- ...`, which gives the deployer's environment and stops the VMs at the end.
set -euo pipefail

say() { printf '\n\033[1m%s\033[0m\n' "$*" >&2; }
net=$NIXPIPE_TESTBED_DIR/network.nix
# network PAGE: three machines, each serving a page; root's key the deployer's.
network() {
    cat >"$net" <<NIX
{
  defaults = { users.users.root.openssh.authorizedKeys.keys = [ "$(cat "$NIXPIPE_TESTBED_DIR/id_ed25519.pub")" ]; };
  web1 = { testbed.webPage = "web1"; };
  web2 = { testbed.webPage = "web2"; };
  db1 = { testbed.webPage = "$1"; };
}
NIX
}
# in_vm NAME COMMAND: COMMAND as root in the running VM NAME.
in_vm() {
    local target port
    target=$(nixpipe-vm list | sed -n "s/.*\"name\":\"$1\".*\"targetHost\":\"\([^\"]*\)\".*/\1/p")
    port=${target##*:}
    # shellcheck disable=SC2086 # NIX_SSHOPTS is a list of words, as Nix splits it
    ssh $NIX_SSHOPTS -p "$port" "${target%:*}" "$2"
}
# shellcheck disable=SC2016 # expanded in the VM
fetch='$(readlink -f /run/current-system/sw/bin/sh) wget -qO-'

network "db1, version 1"
cat "$net" >&2
say "\$ nixpipe-eval --network network.nix --vm-runner | nixpipe-vm start"
time (nixpipe-eval --network "$net" --vm-runner --nixpkgs "$NIXPKGS" | nixpipe-vm start)

say "\$ nixpipe-vm list"
nixpipe-vm list
say "From web1, the other VMs by name, over the network's private link:"
in_vm web1 "$fetch http://db1/; echo; $fetch http://web2/; echo"
say "Memory of each VM's qemu (RSS, kB):"
cat "$XDG_RUNTIME_DIR"/nixpipe-vms/*/pid | while read -r pid; do ps -o rss=,args= -p "$pid" | cut -c1-60; done

network "db1, version 2"
say "Updated in place: \$ nixpipe-eval --network network.nix --vm --json | nixpipe-vm target | nixpipe-copy --json | nixpipe-activate test"
time (nixpipe-eval --network "$net" --vm --json --nixpkgs "$NIXPKGS" | nixpipe-vm target | nixpipe-copy --json | nixpipe-activate test)
say "db1's page, from web1, after the update:"
in_vm web1 "$fetch http://db1/; echo"

say "\$ nixpipe-vm stop"
nixpipe-vm stop
