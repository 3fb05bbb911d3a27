complete -c nixpipe-eval -s f -l file -d 'A classic configuration.nix, evaluated with <nixpkgs/nixos>' -r -F
complete -c nixpipe-eval -l nixpkgs -d 'The nixpkgs to evaluate with; the same as -I nixpkgs=PATH, and it wins' -r -F
complete -c nixpipe-eval -l nixpkgs-url -d 'nixpkgs pinned as a tarball (builtins.fetchTarball), e.g. https://github.com/NixOS/nixpkgs/archive/REV.tar.gz' -r
complete -c nixpipe-eval -l nixpkgs-sha256 -d 'The sha256 of the --nixpkgs-url tarball\'s unpacked contents, as fetchTarball takes it' -r
complete -c nixpipe-eval -l system -d 'Evaluate for another system, e.g. aarch64-linux (with -f or --network; a flake fixes its machines\' systems)' -r
complete -c nixpipe-eval -s I -d 'Add an entry to the Nix search path, as nix-build -I does' -r
complete -c nixpipe-eval -l network -d 'A network file of machines, as nixos-build-vms, NixOps and morph use; NAME is the attribute name' -r -F
complete -c nixpipe-eval -l attr -d 'Any other derivation under config, e.g. system.build.vm' -r
complete -c nixpipe-eval -l build-on -d 'Evaluate here, build on TARGET: the .drv closures go there, one nix-store --realise builds them; the outputs stay there' -r
complete -c nixpipe-eval -l tag -d 'Only the machines whose deployment.tags carry TAG (again for more: any of them)' -r
complete -c nixpipe-eval -l option -d 'Set a Nix setting, as `nix --option NAME VALUE` (again for more)' -r
complete -c nixpipe-eval -l max-jobs -d 'Build at most N derivations at once (Nix\'s max-jobs; `auto` for one per core)' -r
complete -c nixpipe-eval -l cores -d 'Let each build use N cores (Nix\'s cores; 0 for all)' -r
complete -c nixpipe-eval -l builders -d 'Build on these machines (Nix\'s builders setting, e.g. \'ssh://builder x86_64-linux\')' -r
complete -c nixpipe-eval -l override-input -d 'Use FLAKEREF for the flake\'s input INPUT (again for more)' -r
complete -c nixpipe-eval -l all -d 'Every nixosConfigurations entry of the flakes given (of . when none is)'
complete -c nixpipe-eval -l vm -d 'The VM variant\'s toplevel (config.virtualisation.vmVariant.system.build.toplevel), to update a running VM with `nixpipe-activate ... test`'
complete -c nixpipe-eval -l vm-runner -d 'The runnable VM (config.system.build.vm)'
complete -c nixpipe-eval -l microvm-runner -d 'microvm.nix\'s runner (config.microvm.declaredRunner), for nixpipe-microvm'
complete -c nixpipe-eval -l drv -d 'Evaluate only and print .drv paths, to build elsewhere'
complete -c nixpipe-eval -l show-trace -d 'Show the trace of an evaluation error'
complete -c nixpipe-eval -s k -l keep-going -d 'Keep building the other derivations when one fails: the machines that build get their records, the others are named'
complete -c nixpipe-eval -s L -l print-build-logs -d 'Show the full log of every build (as `nix build -L`; nix-build, which builds here, shows them anyway)'
complete -c nixpipe-eval -l impure -d 'Let a flake\'s evaluation read files and the environment outside it'
complete -c nixpipe-eval -l recreate-lock-file -d 'Lock every input of the flake anew'
complete -c nixpipe-eval -l no-write-lock-file -d 'Do not write the flake\'s lock file'
complete -c nixpipe-eval -l refresh -d 'Fetch flake inputs and tarballs anew, whatever is cached'
complete -c nixpipe-eval -l offline -d 'Use only what is here: no downloads, no substituters'
complete -c nixpipe-eval -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-eval -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-eval -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-eval -s V -l version -d 'Print version'
