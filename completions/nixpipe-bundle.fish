complete -c nixpipe-bundle -l config -d 'The configuration directory or file to carry in the bundle' -r -F
complete -c nixpipe-bundle -l nixpkgs -d 'The nixpkgs source to pin in the bundle [default: <nixpkgs> from NIX_PATH]' -r -F
complete -c nixpipe-bundle -l option -d 'Set a Nix setting, as `nix --option NAME VALUE` (again for more)' -r
complete -c nixpipe-bundle -l max-jobs -d 'Build at most N derivations at once (Nix\'s max-jobs; `auto` for one per core)' -r
complete -c nixpipe-bundle -l cores -d 'Let each build use N cores (Nix\'s cores; 0 for all)' -r
complete -c nixpipe-bundle -l builders -d 'Build on these machines (Nix\'s builders setting, e.g. \'ssh://builder x86_64-linux\')' -r
complete -c nixpipe-bundle -l override-input -d 'Use FLAKEREF for the flake\'s input INPUT (again for more)' -r
complete -c nixpipe-bundle -l show-trace -d 'Show the trace of an evaluation error'
complete -c nixpipe-bundle -s k -l keep-going -d 'Keep building the other derivations when one fails: the machines that build get their records, the others are named'
complete -c nixpipe-bundle -s L -l print-build-logs -d 'Show the full log of every build (as `nix build -L`; nix-build, which builds here, shows them anyway)'
complete -c nixpipe-bundle -l impure -d 'Let a flake\'s evaluation read files and the environment outside it'
complete -c nixpipe-bundle -l recreate-lock-file -d 'Lock every input of the flake anew'
complete -c nixpipe-bundle -l no-write-lock-file -d 'Do not write the flake\'s lock file'
complete -c nixpipe-bundle -l refresh -d 'Fetch flake inputs and tarballs anew, whatever is cached'
complete -c nixpipe-bundle -l offline -d 'Use only what is here: no downloads, no substituters'
complete -c nixpipe-bundle -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-bundle -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-bundle -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-bundle -s V -l version -d 'Print version'
