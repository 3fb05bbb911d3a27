complete -c nixpipe-copy -l to -d 'Where to copy: [user@]host[:port], ssh://..., \'root@{name}\', or local [default: the record\'s NAME]' -r
complete -c nixpipe-copy -l from -d 'Copy from a remote store instead of the local one (not implemented yet)' -r
complete -c nixpipe-copy -s s -l substitute-on-destination -d 'Let the target fetch what it can from its own substituters first (not implemented yet)'
complete -c nixpipe-copy -l dry-run -d 'Show what would be copied, copy nothing (not implemented yet)'
complete -c nixpipe-copy -l json -d 'Write JSON records (one object per line) instead of plain lines'
complete -c nixpipe-copy -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-copy -s V -l version -d 'Print version'
