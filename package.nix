# nixpipe as nixpkgs packages Rust programs: every command, its man page and
# its bash, zsh and fish completions (generated into man/ and completions/
# by `cargo xtask gen`, checked in). callPackage it, or use the flake.
{
  lib,
  rustPlatform,
  installShellFiles,
}:

let
  commands = [
    "nixpipe-eval"
    "nixpipe-copy"
    "nixpipe-activate"
    "nixpipe-bundle"
    "nixpipe-microvm"
    "nixpipe-status"
    "nixpipe-vm"
  ];
in
rustPlatform.buildRustPackage {
  pname = "nixpipe";
  version = "0.1.0";

  src = lib.cleanSource ./.;
  cargoLock.lockFile = ./Cargo.lock;

  # Only the commands: not the testbed, the benchmarks or xtask.
  cargoBuildFlags = map (command: "--package=${command}") commands;
  # The tests need root, namespaces and Debian's Nix releases (make test).
  doCheck = false;

  nativeBuildInputs = [ installShellFiles ];

  postInstall = ''
    installManPage man/*.1 man/nixpipe.7
    for command in ${lib.concatStringsSep " " commands}; do
      installShellCompletion --cmd "$command" \
        --bash "completions/$command.bash" \
        --zsh "completions/_$command" \
        --fish "completions/$command.fish"
    done
  '';

  passthru = { inherit commands; };

  meta = {
    description = "NixOS deployment as small Unix commands joined by pipes of store paths";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "nixpipe-eval";
    platforms = lib.platforms.linux;
  };
}
