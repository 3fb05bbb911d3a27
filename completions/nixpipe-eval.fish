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
complete -c nixpipe-eval -l all -d 'Every nixosConfigurations entry of the flakes given (of . when none is)'
complete -c nixpipe-eval -l vm -d 'The VM variant\'s toplevel (config.virtualisation.vmVariant.system.build.toplevel), to update a running VM with `nixpipe-activate ... test`'
complete -c nixpipe-eval -l vm-runner -d 'The runnable VM (config.system.build.vm)'
complete -c nixpipe-eval -l microvm-runner -d 'microvm.nix\'s runner (config.microvm.declaredRunner), for nixpipe-microvm'
complete -c nixpipe-eval -l drv -d 'Evaluate only and print .drv paths, to build elsewhere'
complete -c nixpipe-eval -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-eval -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-eval -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-eval -s V -l version -d 'Print version'
