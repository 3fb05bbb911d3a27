# Facts nixpipe-activate needs from the target, read as the login user, in
# one round trip, changing nothing. Arguments: PATH, SPECIALISATION (may be
# empty), and WHICH: `given` (PATH), `rollback` (the generation before the
# current one) or `previous-bundle` (/etc/nixos/previous-configuration).
p=$1 spec=$2 which=$3
profile=/nix/var/nix/profiles/system
printf 'hostname=%s\n' "$(cat /proc/sys/kernel/hostname)"
printf 'uid=%s\n' "$(id -u)"
# readlink -f prints a path that does not exist too: with no
# /run/current-system (a first deploy), nothing ran before.
current=
[ -e /run/current-system ] && current=$(readlink -f /run/current-system)
printf 'current=%s\n' "$current"
case $which in
    rollback)
        # What `nix-env --rollback` goes back to: the highest generation below the current one.
        n=$(readlink "$profile" 2>/dev/null | sed -n 's/^system-\([0-9]*\)-link$/\1/p')
        prev=$(ls "${profile%/*}" 2>/dev/null | sed -n 's/^system-\([0-9]*\)-link$/\1/p' | sort -n |
            awk -v n="${n:-0}" '$1 < n' | tail -n 1)
        [ -n "$prev" ] || exit 0
        p=$(readlink -f "$profile-$prev-link")
        ;;
    previous-bundle)
        [ -e /etc/nixos/previous-configuration ] || exit 0
        p=$(readlink -f /etc/nixos/previous-configuration)
        ;;
esac
printf 'resolved=%s\n' "$p"
if nix-store --check-validity "$p" 2>/dev/null; then echo valid=1; else echo valid=0; fi
system=$p
# A bundle (nixpipe-bundle) carries its system as toplevel, and bin/switch.
if [ -f "$p/manifest.json" ] && [ -x "$p/bin/switch" ] && [ -e "$p/toplevel" ]; then
    echo bundle=1
    system=$p/toplevel
fi
if [ -f "$system/nixos-version" ] && [ -x "$system/bin/switch-to-configuration" ]; then echo nixos=1; else echo nixos=0; fi
if [ -f "$system/etc/hostname" ]; then printf 'configured=%s\n' "$(cat "$system/etc/hostname")"; fi
if [ -n "$spec" ]; then
    if [ -x "$system/specialisation/$spec/bin/switch-to-configuration" ]; then echo specialisation=1; else echo specialisation=0; fi
    printf 'specialisations=%s\n' "$(ls "$system/specialisation" 2>/dev/null | tr '\n' ' ')"
fi
