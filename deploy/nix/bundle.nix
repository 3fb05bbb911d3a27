# nixpipe-bundle: one store path per machine holding its configuration files
# as given, the pinned nixpkgs source, the toplevel, manifest.json and
# bin/switch (also bin/nixos-rebuild-switch). Built by nix-build, all
# machines in one call.
{ request }:
let
  req = builtins.fromJSON request;
  # Builds the bundle here: it holds only files, links and a script.
  pkgs = import (/. + req.nixpkgs) { };
  config = /. + req.config;
  # Every file under a directory, with its path relative to it.
  files = dir: prefix: builtins.concatLists (map
    (n:
      if (builtins.readDir dir).${n} == "directory"
      then files (dir + "/${n}") "${prefix}${n}/"
      else [{ name = "${prefix}${n}"; value = builtins.hashFile "sha256" (dir + "/${n}"); }])
    (builtins.attrNames (builtins.readDir dir)));
  configFiles = builtins.listToAttrs
    (if req.configIsDir then files config "" else [{ name = baseNameOf req.config; value = builtins.hashFile "sha256" config; }]);
  configSource = builtins.path { path = config; name = "configuration"; };
  nixpkgsSource = builtins.path { path = /. + req.nixpkgs; name = "nixpkgs-source"; };
  bundle = machine:
    let
      toplevel = builtins.storePath machine.toplevel;
      # bin/switch runs with the system's own shell (bash, which NixOS puts
      # in every system's sw): built for the platform the system runs on,
      # whatever platform the bundle is made on, and already in its closure.
      shell = "${toplevel}/sw/bin/sh";
      manifest = builtins.toJSON {
        inherit (machine) name;
        toplevel = "${toplevel}";
        nixpkgs = "${nixpkgsSource}";
        files = configFiles;
        nixpipe = req.version;
      };
    in
    pkgs.runCommand "nixpipe-bundle${if machine.name == "" then "" else "-${machine.name}"}" { inherit manifest; } ''
      if [ ! -x ${shell} ]; then
        echo "${toplevel} has no sw/bin/sh to run bin/switch with: not a NixOS system" >&2
        exit 1
      fi
      mkdir -p $out/bin
      ${if req.configIsDir then "cp -R ${configSource}/. $out/" else "cp ${configSource} $out/${baseNameOf req.config}"}
      ln -s ${nixpkgsSource} $out/nixpkgs
      ln -s ${toplevel} $out/toplevel
      printf '%s' "$manifest" > $out/manifest.json
      sed -e "s|@shell@|${shell}|" -e "s|@out@|$out|g" > $out/bin/switch <<'SWITCH'
      ${req.switchScript}
      SWITCH
      chmod +x $out/bin/switch
      ln -s switch $out/bin/nixos-rebuild-switch
    '';
in
map bundle req.machines
