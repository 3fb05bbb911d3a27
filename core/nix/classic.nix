# Evaluates a classic configuration.nix with <nixpkgs/nixos>, as
# nixos-rebuild does, to the facts a record needs. Building is separate, so
# that many machines can be built in one nix call.
{ configuration }:
let
  nixos = import <nixpkgs/nixos> { configuration = /. + configuration; };
  toplevel = nixos.config.system.build.toplevel;
in
[
  {
    name = nixos.config.networking.hostName;
    # Not `outPath`: Nix would print a set holding one as that string.
    out = toplevel.outPath;
    inherit (toplevel) drvPath;
    system = toplevel.system or null;
  }
]
