# The deployment.* options nixpipe reads, as NixOps, morph and colmena
# declare them: a module for configurations whose module system has options
# (nixpkgs' lib); nothing where it has none.
{ lib, ... }:
if lib ? mkOption then {
  options.deployment.targetHost = lib.mkOption { default = null; };
  options.deployment.tags = lib.mkOption { default = [ ]; };
  options.deployment.keys = lib.mkOption { default = { }; };
} else { }
