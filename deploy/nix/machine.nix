# What a record needs from one evaluated machine: its name and the
# derivation at attrPath under its config (system.build.toplevel by default),
# deployment.targetHost where the machine sets it, deployment.tags and
# deployment.keys.
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
  # Each key's name, settings and source, never its text (nixpipe-eval
  # refuses a key that has one) and never keyFile as a path value, which
  # Nix would copy into the store: toString gives the path itself.
  keys =
    let keys = config.deployment.keys or { }; in
    map
      (name: let key = keys.${name}; in {
        inherit name;
        text = (key.text or null) != null;
        keyFile = if (key.keyFile or null) == null then null else toString key.keyFile;
        keyCommand = key.keyCommand or null;
        destDir = key.destDir or "/run/keys";
        user = key.user or "root";
        group = key.group or "root";
        permissions = key.permissions or "0600";
        uploadAt = key.uploadAt or "pre-activation";
      })
      (builtins.attrNames keys);
}
