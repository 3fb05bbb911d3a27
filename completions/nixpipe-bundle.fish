complete -c nixpipe-bundle -l config -d 'The configuration directory or file to carry in the bundle' -r -F
complete -c nixpipe-bundle -l nixpkgs -d 'The nixpkgs source to pin in the bundle [default: <nixpkgs> from NIX_PATH]' -r -F
complete -c nixpipe-bundle -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-bundle -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-bundle -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-bundle -s V -l version -d 'Print version'
