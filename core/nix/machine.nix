# What a record needs from one evaluated machine: its name and the
# derivation at attrPath under its config (system.build.toplevel by default),
# deployment.targetHost where the machine sets it, and deployment.tags.
# Shared by every kind of input (classic.nix, and flakes through --apply).
attrPath: name: config:
let
  drv = builtins.foldl' (value: attr: value.${attr}) config attrPath;
in
{
  inherit name;
  # Not `outPath`: Nix would print a set holding one as that string.
  out = drv.outPath;
  inherit (drv) drvPath;
  system = drv.system or null;
  targetHost = config.deployment.targetHost or null;
  tags = config.deployment.tags or [ ];
}
