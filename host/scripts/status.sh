# What a host runs, for nixpipe-status, read-only: a `status` event.
#   status.sh path=PATH
# PATH is a record's path: a system, or a bundle (whose toplevel is the
# system it runs). The profile's generation is the number in the name of
# the link /nix/var/nix/profiles/system points at (system-N-link).
takes path -- "$@"
system=$path
[ -e "$system/toplevel" ] && system=$(readlink -f "$system/toplevel")
current='' booted='' profile='' generation='' reboot=unknown
[ -e /run/current-system ] && current=$(readlink -f /run/current-system)
[ -e /run/booted-system ] && booted=$(readlink -f /run/booted-system)
if link=$(readlink /nix/var/nix/profiles/system 2>/dev/null); then
    profile=$(readlink -f /nix/var/nix/profiles/system)
    generation=${link#system-}
    generation=${generation%-link}
fi
[ -n "$current" ] && reboot=$(needs_reboot "$current")
emit status system="$system" current="$current" booted="$booted" profile="$profile" \
    generation="$generation" reboot="$reboot"
