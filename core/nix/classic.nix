# Evaluates a classic configuration.nix with <nixpkgs/nixos>, as
# nixos-rebuild does, to the facts a record needs (machine.nix). Building is
# separate, so that many machines can be built in one nix call.
machine:
{ configuration }:
let
  nixos = import <nixpkgs/nixos> { configuration = /. + configuration; };
in
[ (machine nixos.config.networking.hostName nixos.config) ]
