# --network FILE: an attribute set of machines, as nixos-build-vms, NixOps
# and morph use it (a set, or a function of { } giving one). Each machine is
# a module (a set, or a function of { config, pkgs, ... }); `defaults` goes
# into every machine; `network`, `resources` and `meta` are not machines.
# A machine may set deployment.targetHost and nixpkgs.system; `system`
# (--system) evaluates them all for another architecture.
declarations: machine:
# vmNetwork (the VM variants: --vm, --vm-runner) puts every machine on one
# private network as nixos-build-vms' test network does (nixos/lib/testing/
# network.nix): the machine numbered N (by name, from 1) is 192.168.1.N on
# eth1, its second NIC on vde link 1 ($QEMU_VDE_SOCKET_1, which
# `nixpipe-vm start` sets), and networking.hosts names every machine.
{ network, only ? "null", namesOnly ? "", system ? "", vmNetwork ? "" }:
let
  file = import (/. + network);
  machines = if builtins.isFunction file then file { } else file;
  names = builtins.filter (n: !(builtins.elem n [ "network" "defaults" "resources" "meta" ]))
    (builtins.attrNames machines);
  wanted = let o = builtins.fromJSON only; in if o == null then names else o;
  number = name: builtins.length (builtins.filter (n: n < name) names) + 1;
  address = name: "192.168.1.${toString (number name)}";
  pad = n: if n < 10 then "0${toString n}" else toString n;
  onTheNetwork = name: {
    virtualisation.qemu.options = [
      "-device virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:${pad (number name)}"
      "-netdev vde,id=vlan1,sock=\"$QEMU_VDE_SOCKET_1\""
    ];
    networking.interfaces.eth1.ipv4.addresses = [ { address = address name; prefixLength = 24; } ];
    networking.hosts = builtins.listToAttrs (map (n: { name = address n; value = [ n ]; }) names);
  };
  evaluate = name: (import <nixpkgs/nixos/lib/eval-config.nix> ({
    modules = [
      declarations
      (machines.defaults or { })
      machines.${name}
      ({ lib, ... }: { networking.hostName = lib.mkDefault name; })
    ] ++ (if vmNetwork != "" then [ (onTheNetwork name) ] else [ ]);
  } // (if system == "" then { } else { inherit system; }))).config;
in
if namesOnly != "" then names else map (name: machine name (evaluate name)) wanted
