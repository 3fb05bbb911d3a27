complete -c nixpipe-status -l on -d 'Which host to ask: [user@]host[:port], ssh://..., \'root@{name}\', or local [default: the record\'s NAME, else local]' -r
complete -c nixpipe-status -s j -l jobs -d 'Work on up to N hosts at once' -r
complete -c nixpipe-status -l timeout -d 'Give up on a host (or store) that neither says nor takes a byte for SECONDS: a login that hangs, a daemon that never answers, a frozen link; the other hosts go on' -r
complete -c nixpipe-status -l changed -d 'Write only the records whose host does not run them (and those whose host could not tell)'
complete -c nixpipe-status -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-status -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-status -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-status -s V -l version -d 'Print version'
