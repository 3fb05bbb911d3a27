complete -c nixpipe-activate -l on -d 'Where to activate: [user@]host[:port], ssh://..., \'root@{name}\', or local [default: the record\'s NAME, else local]' -r
complete -c nixpipe-activate -l specialisation -d 'Activate specialisation/NAME of the system (the profile gets the system itself)' -r
complete -c nixpipe-activate -l confirm-timeout -d 'Roll back unless a new ssh connection confirms the switch within SECONDS; with --reboot, unless the host is back on the new generation (booted once) within SECONDS, refused where its boot loader cannot boot once' -r
complete -c nixpipe-activate -l sudo-cmd -d 'Become root with CMD instead of sudo: \'doas -n\', run0 (systemd 256 and later), \'systemd-run --uid=0 --pipe --wait --quiet\'; it must let the user in without a password' -r
complete -c nixpipe-activate -s j -l jobs -d 'Work on up to N hosts at once' -r
complete -c nixpipe-activate -l timeout -d 'Give up on a host (or store) that neither says nor takes a byte for SECONDS: a login that hangs, a daemon that never answers, a frozen link; the other hosts go on' -r
complete -c nixpipe-activate -l batch -d 'Roll out N hosts at a time; a failed host (switch or --check) stops the rollout' -r
complete -c nixpipe-activate -l if-inhibited -d 'When the system\'s switch inhibitors forbid a switch (critical components changed): refuse it, or make it the boot default instead (boot), to run at the next reboot' -r -f -a "refuse\t'Refuse it, changing nothing'
boot\t'Make it the boot default instead (boot), to activate at the next reboot'"
complete -c nixpipe-activate -l reboot-timeout -d 'How long a rebooted target may take to answer again' -r
complete -c nixpipe-activate -l lock-timeout -d 'How long to wait for NixOS\'s own switch lock when another switch holds it (nixos-rebuild, an auto-upgrade); then the target is left as it is' -r
complete -c nixpipe-activate -l reconnect-timeout -d 'How long to keep trying to reach a host again whose connection was lost while its switch runs (the switch goes on there); then nixpipe says so and exits 1' -r
complete -c nixpipe-activate -l check -d 'Run COMMAND on each target after switching (e.g. \'curl -fsS localhost/health\'); when it fails, that target rolls back' -r
complete -c nixpipe-activate -l no-hostname-check -d 'Activate even when the target\'s hostname is not the record\'s'
complete -c nixpipe-activate -l dry-run -d 'Check everything on the target, change nothing'
complete -c nixpipe-activate -l rollback -d 'Go back one generation of the system profile on --on TARGET and activate it; reads no records'
complete -c nixpipe-activate -l restore-bundle -d 'Bring back the bundle before the current one (/etc/nixos/previous-configuration) on --on TARGET; reads no records'
complete -c nixpipe-activate -l ask-sudo-password -d 'Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)'
complete -c nixpipe-activate -l sudo-password-per-host -d 'Ask a sudo password for each host that needs one, naming the host: no host gets another\'s'
complete -c nixpipe-activate -l realise -d 'Let the target fetch a missing system from its own substituters first'
complete -c nixpipe-activate -l diff -d 'Show what changes (packages upgraded, added, removed) before activating, on stderr'
complete -c nixpipe-activate -l fail-fast -d 'Start no more hosts once one has failed'
complete -c nixpipe-activate -l reboot -d 'Reboot into the new system when it is the boot default but does not run yet (boot, an inhibited switch, a changed init interface or kernel), and check that it comes back running it. For boot, under systemd-boot or GRUB, the new generation boots once and becomes the default only once it is back'
complete -c nixpipe-activate -l keep-on-unit-failure -d 'Keep a new system whose switch left units failed (exit 4) instead of rolling back'
complete -c nixpipe-activate -l install-bootloader -d '(Re)install the boot loader (NIXOS_INSTALL_BOOTLOADER=1), as nixos-rebuild --install-bootloader'
complete -c nixpipe-activate -l keys -d 'Upload each record\'s deployment.keys (JSON records of nixpipe-eval) before the switch, or after it for uploadAt = "post-activation"; contents read here, sent over ssh\'s stdin only'
complete -c nixpipe-activate -l run-key-commands -d 'Run the keyCommand of records\' keys here, as you (--keys): the records are code then, so only for records you made (nixpipe-eval of your own configuration), never ones fetched from elsewhere'
complete -c nixpipe-activate -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-activate -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-activate -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-activate -s V -l version -d 'Print version'
