# --network FILE: an attribute set of machines, as nixos-build-vms, NixOps
# and morph use it (a set, or a function of { } giving one). Each machine is
# a module (a set, or a function of { config, pkgs, ... }); `defaults` goes
# into every machine; `network`, `resources` and `meta` are not machines.
# A machine may set deployment.targetHost and nixpkgs.system; `system`
# (--system) evaluates them all for another architecture.
declarations: machine:
{ network, only ? "null", namesOnly ? "", system ? "" }:
let
  file = import (/. + network);
  machines = if builtins.isFunction file then file { } else file;
  names = builtins.filter (n: !(builtins.elem n [ "network" "defaults" "resources" "meta" ]))
    (builtins.attrNames machines);
  wanted = let o = builtins.fromJSON only; in if o == null then names else o;
  evaluate = name: (import <nixpkgs/nixos/lib/eval-config.nix> ({
    modules = [
      declarations
      (machines.defaults or { })
      machines.${name}
      ({ lib, ... }: { networking.hostName = lib.mkDefault name; })
    ];
  } // (if system == "" then { } else { inherit system; }))).config;
in
if namesOnly != "" then names else map (name: machine name (evaluate name)) wanted
