complete -c nixpipe-copy -l to -d 'Where to copy: [user@]host[:port], ssh://..., \'root@{name}\', local, or a binary cache file:///DIR [default: the record\'s NAME]' -r
complete -c nixpipe-copy -l from -d 'Copy from this store instead of the local one: [user@]host[:port], ssh://..., \'root@{name}\'' -r
complete -c nixpipe-copy -l protocol -d 'Which protocol to speak with the stores at both ends: serve (`nix-store --serve --write`, the legacy ssh:// store), daemon (`nix-daemon --stdio`, the ssh-ng:// store: Nix 2.4 or newer, nix-daemon on the remote PATH), or auto: serve where the store\'s nix-store still has --serve, else daemon' -r -f -a "auto\t'The serve protocol where the target\'s nix-store has `--serve`, else the daemon protocol'
serve\t'`nix-store --serve --write`, the legacy ssh:// store (every Nix up to today)'
daemon\t'`nix-daemon --stdio`, the ssh-ng:// store (Nix 2.4 and later)'"
complete -c nixpipe-copy -l sign-key -d 'Sign every path copied with this secret key (from nix-store --generate-binary-cache-key)' -r -F
complete -c nixpipe-copy -l compress -d 'How NARs travel to an ssh target: zstd compresses them in nixpipe\'s stream and the target\'s zstd decompresses them (a target without zstd gets ssh\'s own compression instead)' -r -f -a "none\t'As they are; ssh encrypts, nothing else'
zstd\t'zstd-compressed by nixpipe, decompressed by the target\'s zstd (or ssh\'s own compression where the target has no zstd)'"
complete -c nixpipe-copy -l via -d 'Upload once: copy the closures to this relay host or binary cache (file:///DIR, with --sign-key), and let every target fetch them from there' -r
complete -c nixpipe-copy -l cache-url -d 'Where the targets fetch a --via file:///DIR cache from, e.g. https://cache.example.org [default: the file:// URL itself, for a directory every target mounts]' -r
complete -c nixpipe-copy -s j -l jobs -d 'Work on up to N hosts at once' -r
complete -c nixpipe-copy -l timeout -d 'Give up on a host (or store) that neither says nor takes a byte for SECONDS: a login that hangs, a daemon that never answers, a frozen link; the other hosts go on' -r
complete -c nixpipe-copy -s s -l substitute-on-destination -d 'Let the target fetch what it can from its own substituters first'
complete -c nixpipe-copy -l no-gc-root -d 'Keep no GC root on the target for the records copied (by default each record\'s path is one, under /nix/var/nix/gcroots/nixpipe/NAME, until nixpipe-activate has put it in the system profile)'
complete -c nixpipe-copy -l dry-run -d 'Say on stderr what would be copied; copy nothing, write no records'
complete -c nixpipe-copy -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-copy -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-copy -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-copy -s V -l version -d 'Print version'
