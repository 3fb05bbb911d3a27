# What a record needs from one evaluated machine: its name and its toplevel.
# Shared by every kind of input (classic.nix, and flakes through --apply).
name: config:
let
  toplevel = config.system.build.toplevel;
in
{
  inherit name;
  # Not `outPath`: Nix would print a set holding one as that string.
  out = toplevel.outPath;
  inherit (toplevel) drvPath;
  system = toplevel.system or null;
}
