{
  description = "nixpipe: NixOS deployment as small Unix commands joined by pipes of store paths";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forEachSystem = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: { nixpipe = final.callPackage ./package.nix { }; };

      packages = forEachSystem (pkgs: rec {
        nixpipe = pkgs.callPackage ./package.nix { };
        default = nixpipe;
      });

      # `nix run .#nixpipe-copy -- --to root@web1 ...`; the default is nixpipe-eval.
      apps = forEachSystem (
        pkgs:
        let
          nixpipe = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          app = command: {
            type = "app";
            program = "${nixpipe}/bin/${command}";
          };
        in
        nixpkgs.lib.genAttrs nixpipe.commands app // { default = app "nixpipe-eval"; }
      );

      devShells = forEachSystem (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [ pkgs.clippy pkgs.rustfmt pkgs.shellcheck ];
        };
      });
    };
}
