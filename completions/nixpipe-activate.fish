complete -c nixpipe-activate -l on -d 'Where to activate: [user@]host[:port], ssh://..., \'root@{name}\', or local [default: the record\'s NAME, else local]' -r
complete -c nixpipe-activate -l specialisation -d 'Activate specialisation/NAME of the system (not implemented yet)' -r
complete -c nixpipe-activate -l confirm-timeout -d 'Roll back unless a new connection confirms within SECONDS (not implemented yet)' -r
complete -c nixpipe-activate -l no-hostname-check -d 'Activate even when the target\'s hostname is not the record\'s'
complete -c nixpipe-activate -l dry-run -d 'Check everything on the target, change nothing'
complete -c nixpipe-activate -l rollback -d 'Go back to the previous generation (not implemented yet)'
complete -c nixpipe-activate -l ask-sudo-password -d 'Ask the sudo password once, on the terminal (not implemented yet)'
complete -c nixpipe-activate -l json -d 'Write JSON records (one object per line) instead of plain lines'
complete -c nixpipe-activate -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-activate -s V -l version -d 'Print version'
