# Facts nixpipe-activate needs from the target, read as the login user, in
# one round trip, changing nothing. Arguments: PATH (empty: the generation
# before the current one, for --rollback) and SPECIALISATION (may be empty).
p=$1 spec=$2
profile=/nix/var/nix/profiles/system
printf 'hostname=%s\n' "$(cat /proc/sys/kernel/hostname)"
printf 'uid=%s\n' "$(id -u)"
printf 'current=%s\n' "$(readlink -f /run/current-system 2>/dev/null)"
if [ -z "$p" ]; then
    # What `nix-env --rollback` goes back to: the highest generation below the current one.
    n=$(readlink "$profile" 2>/dev/null | sed -n 's/^system-\([0-9]*\)-link$/\1/p')
    prev=$(ls "${profile%/*}" 2>/dev/null | sed -n 's/^system-\([0-9]*\)-link$/\1/p' | sort -n |
        awk -v n="${n:-0}" '$1 < n' | tail -n 1)
    [ -n "$prev" ] || exit 0
    p=$(readlink -f "$profile-$prev-link")
    printf 'rollback_to=%s\n' "$p"
fi
if nix-store --check-validity "$p" 2>/dev/null; then echo valid=1; else echo valid=0; fi
if [ -f "$p/nixos-version" ] && [ -x "$p/bin/switch-to-configuration" ]; then echo nixos=1; else echo nixos=0; fi
if [ -f "$p/etc/hostname" ]; then printf 'configured=%s\n' "$(cat "$p/etc/hostname")"; fi
if [ -n "$spec" ]; then
    if [ -x "$p/specialisation/$spec/bin/switch-to-configuration" ]; then echo specialisation=1; else echo specialisation=0; fi
    printf 'specialisations=%s\n' "$(ls "$p/specialisation" 2>/dev/null | tr '\n' ' ')"
fi
