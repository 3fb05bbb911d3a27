# Evaluates a classic configuration.nix with <nixpkgs/nixos>, as
# nixos-rebuild does, to the facts a record needs (machine.nix). Building is
# separate, so that many machines can be built in one nix call.
machine:
{ configuration, system ? "" }:
let
  nixos = import <nixpkgs/nixos> ({ configuration = /. + configuration; }
    // (if system == "" then { } else { inherit system; }));
in
[ (machine nixos.config.networking.hostName nixos.config) ]
