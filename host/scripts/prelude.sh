# What every script nixpipe runs on a host starts with (session.rs puts it
# in front). The script's answer is a list of events on the channel that was
# stdout, now fd 3; stdout itself goes to stderr, so that what the programs
# a script runs print can never pass for an event. An event is one line:
#   nixpipe-event<TAB>KIND<TAB>KEY=VALUE<TAB>...
# with tabs and newlines in values turned into spaces.
exec 3>&1 1>&2
event_tab=$(printf '\t')
event_newline='
'

# emit KIND KEY=VALUE...: one event on the event channel.
emit() {
    event_line "$@" >&3
}

# event_line KIND KEY=VALUE...: one event, on stdout.
event_line() {
    printf 'nixpipe-event\t%s' "$1"
    shift
    for field; do
        case $field in
            *"$event_tab"* | *"$event_newline"*) field=$(printf '%s' "$field" | tr '\t\n' '  ') ;;
        esac
        printf '\t%s' "$field"
    done
    printf '\n'
}

# What every session learns once: who logs in, whether sudo lets that
# user in without a password, which init runs. (Not which Nix: nothing
# asks, and starting nix-store costs every probe tens of milliseconds.)
host_facts() {
    init=other
    [ -d /run/systemd/system ] && init=systemd
    uid=$(id -u) sudo=
    if [ "$uid" != 0 ] && command -v sudo >/dev/null 2>&1; then
        if sudo -n true 2>/dev/null; then sudo=1; else sudo=0; fi
    fi
    machine=$(uname -m)
    emit host uid="$uid" init="$init" machine="$machine" sudo="$sudo"
}

# Whether a reboot is needed to run SYSTEM fully: the booted kernel,
# initrd or kernel modules are not its own. unknown without /run/booted-system.
needs_reboot() {
    [ -e /run/booted-system ] || { echo unknown; return; }
    for part in kernel initrd kernel-modules; do
        [ "$(readlink -f "/run/booted-system/$part")" = "$(readlink -f "$1/$part")" ] || { echo 1; return; }
    done
    echo 0
}
