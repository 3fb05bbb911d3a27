# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_nixpipe_microvm_global_optspecs
    string join \n h/help V/version
end

function __fish_nixpipe_microvm_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_nixpipe_microvm_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_nixpipe_microvm_using_subcommand
    set -l cmd (__fish_nixpipe_microvm_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -s V -l version -d 'Print version'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -f -a "install" -d 'Point /var/lib/microvms/NAME/current at each runner record (NAME: the VM)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -f -a "switch" -d 'Update a running VM in place when it shares the host\'s /nix/store (microvm.nix\'s sshSwitch)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -f -a "list" -d 'List the VMs on a host: current, outdated (needs a restart), not booted, or stale (runner gone)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -f -a "remove" -d 'Stop a VM and remove its links and GC roots, keeping its state unless --purge'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l on -d 'The host that runs the VMs' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l sudo-cmd -d 'Become root with CMD instead of sudo: \'doas -n\', run0 (systemd 256 and later), \'systemd-run --uid=0 --pipe --wait --quiet\'; it must let the user in without a password' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l restart -d 'When to restart microvm@NAME.service' -r -f -a "auto\t'Only when the VM runs and was booted from another runner'
always\t'Every time'
never\t'Never: the VM runs its old runner until restarted'"
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l option -d 'Set a Nix setting, as `nix --option NAME VALUE` (again for more)' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l max-jobs -d 'Build at most N derivations at once (Nix\'s max-jobs; `auto` for one per core)' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l cores -d 'Let each build use N cores (Nix\'s cores; 0 for all)' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l builders -d 'Build on these machines (Nix\'s builders setting, e.g. \'ssh://builder x86_64-linux\')' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l override-input -d 'Use FLAKEREF for the flake\'s input INPUT (again for more)' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l ask-sudo-password -d 'Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l sudo-password-per-host -d 'Ask a sudo password for each host that needs one, naming the host: no host gets another\'s'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l build-on-host -d 'The records are .drv paths: copy them to the host and build there'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l show-trace -d 'Show the trace of an evaluation error'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -s k -l keep-going -d 'Keep building the other derivations when one fails: the machines that build get their records, the others are named'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -s L -l print-build-logs -d 'Show the full log of every build (as `nix build -L`; nix-build, which builds here, shows them anyway)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l impure -d 'Let a flake\'s evaluation read files and the environment outside it'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l recreate-lock-file -d 'Lock every input of the flake anew'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l no-write-lock-file -d 'Do not write the flake\'s lock file'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l refresh -d 'Fetch flake inputs and tarballs anew, whatever is cached'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l offline -d 'Use only what is here: no downloads, no substituters'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand install" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l vm -d 'The VM itself: [user@]host[:port], or a template such as \'root@{name}\'' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l sudo-cmd -d 'Become root with CMD instead of sudo: \'doas -n\', run0 (systemd 256 and later), \'systemd-run --uid=0 --pipe --wait --quiet\'; it must let the user in without a password' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -s j -l jobs -d 'Work on up to N hosts at once' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l timeout -d 'Give up on a host (or store) that neither says nor takes a byte for SECONDS: a login that hangs, a daemon that never answers, a frozen link; the other hosts go on' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l no-hostname-check -d 'Switch even when the VM\'s hostname is not the record\'s NAME'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l ask-sudo-password -d 'Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l sudo-password-per-host -d 'Ask a sudo password for each host that needs one, naming the host: no host gets another\'s'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand switch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l on -d 'The host that runs the VMs' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l sudo-cmd -d 'Become root with CMD instead of sudo: \'doas -n\', run0 (systemd 256 and later), \'systemd-run --uid=0 --pipe --wait --quiet\'; it must let the user in without a password' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l vm -d 'Ask each running VM what it runs, over ssh at TARGET (\'root@{name}\', \'root@127.0.0.1:2222\'): a VM switched in place (switch --vm) is current although it booted an older runner' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l ask-sudo-password -d 'Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l sudo-password-per-host -d 'Ask a sudo password for each host that needs one, naming the host: no host gets another\'s'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l json -d 'Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -l plain -d 'Write plain records (NAME<TAB>PATH), also when they came as JSON'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand list" -s h -l help -d 'Print help'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -l on -d 'The host that runs the VMs' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -l sudo-cmd -d 'Become root with CMD instead of sudo: \'doas -n\', run0 (systemd 256 and later), \'systemd-run --uid=0 --pipe --wait --quiet\'; it must let the user in without a password' -r
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -l ask-sudo-password -d 'Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -l sudo-password-per-host -d 'Ask a sudo password for each host that needs one, naming the host: no host gets another\'s'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -l purge -d 'Remove its state directory too'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand remove" -s h -l help -d 'Print help'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand help; and not __fish_seen_subcommand_from install switch list remove help" -f -a "install" -d 'Point /var/lib/microvms/NAME/current at each runner record (NAME: the VM)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand help; and not __fish_seen_subcommand_from install switch list remove help" -f -a "switch" -d 'Update a running VM in place when it shares the host\'s /nix/store (microvm.nix\'s sshSwitch)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand help; and not __fish_seen_subcommand_from install switch list remove help" -f -a "list" -d 'List the VMs on a host: current, outdated (needs a restart), not booted, or stale (runner gone)'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand help; and not __fish_seen_subcommand_from install switch list remove help" -f -a "remove" -d 'Stop a VM and remove its links and GC roots, keeping its state unless --purge'
complete -c nixpipe-microvm -n "__fish_nixpipe_microvm_using_subcommand help; and not __fish_seen_subcommand_from install switch list remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
