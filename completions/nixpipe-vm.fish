# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_nixpipe_vm_global_optspecs
    string join \n h/help V/version
end

function __fish_nixpipe_vm_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_nixpipe_vm_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_nixpipe_vm_using_subcommand
    set -l cmd (__fish_nixpipe_vm_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -s V -l version -d 'Print version'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "start" -d 'Start every runner record\'s VM at once; write each one\'s record with its ssh target (JSON, targetHost)'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "list" -d 'Write the records of the VMs that run (JSON, targetHost)'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "target" -d 'Give each record the ssh target of the running VM of its name (JSON, targetHost): what to deploy where'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "stop" -d 'Stop the VMs named, or every one'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "known-hosts" -d 'Print the path of the known_hosts file that holds the running VMs\' host keys'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand start" -l ssh-port -d 'The first VM\'s ssh port on 127.0.0.1, the next VMs\' after it [default: free ports]' -r
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand start" -l boot-timeout -d 'Give up on a VM whose ssh has not answered after SECONDS (and stop every VM of this start)' -r
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand start" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand list" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand target" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand stop" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand known-hosts" -s h -l help -d 'Print help'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "start" -d 'Start every runner record\'s VM at once; write each one\'s record with its ssh target (JSON, targetHost)'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "list" -d 'Write the records of the VMs that run (JSON, targetHost)'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "target" -d 'Give each record the ssh target of the running VM of its name (JSON, targetHost): what to deploy where'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "stop" -d 'Stop the VMs named, or every one'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "known-hosts" -d 'Print the path of the known_hosts file that holds the running VMs\' host keys'
complete -c nixpipe-vm -n "__fish_nixpipe_vm_using_subcommand help; and not __fish_seen_subcommand_from start list target stop known-hosts help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
