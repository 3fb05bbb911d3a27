# Facts nixpipe-activate needs from the target, read as the login user, in
# one round trip, changing nothing: the session's facts (a `host` event),
# then one `probe` event. Arguments: path, spec (the specialisation, may be
# empty), which: `given` (path), `rollback` (the generation before the
# current one) or `previous-bundle` (/etc/nixos/previous-configuration),
# hold: 1 to keep the session for what nixpipe runs next (held), and
# loader: 1 to say which boot loader can boot a generation once (--reboot).
takes path spec which hold loader -- "$@"

# The boot loader that can boot a generation once, in $boot_loader, or
# what is missing for it, in $boot_once_missing. systemd-boot says it is
# the loader that booted (LoaderInfo) and which features it has
# (LoaderFeatures: bit 3, one-shot entry control); bootctl sets the
# variable, which must be writable. NixOS's grub.cfg boots grub-reboot's
# next_entry once and clears it in grubenv.
boot_once() {
    efivars=/sys/firmware/efi/efivars
    vendor=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
    boot_loader='' boot_once_missing=''
    if [ -e "$efivars/LoaderInfo-$vendor" ]; then
        boot_loader=systemd-boot
        features=$(od -An -t u8 -j 4 -N 8 "$efivars/LoaderFeatures-$vendor" 2>/dev/null | tr -d ' ')
        if [ -n "$features" ] && [ $((features & 8)) = 0 ]; then
            boot_once_missing="its systemd-boot has no one-shot entry (LoaderFeatures)"
        elif ! awk -v d="$efivars" '$2 == d && $3 == "efivarfs" && $4 ~ /^rw/ { ok = 1 } END { exit !ok }' /proc/mounts; then
            boot_once_missing="its EFI variables are not writable (efivarfs is not mounted read-write on $efivars)"
        elif ! command -v bootctl >/dev/null; then
            boot_once_missing="bootctl is not on its PATH"
        fi
    elif [ -f /boot/grub/grub.cfg ]; then
        boot_loader=grub
        if ! grep -q 'next_entry' /boot/grub/grub.cfg; then
            boot_once_missing="its /boot/grub/grub.cfg does not boot grub-reboot's next_entry"
        elif [ ! -f /boot/grub/grubenv ]; then
            boot_once_missing="GRUB has no saved environment (/boot/grub/grubenv)"
        elif ! command -v grub-reboot >/dev/null; then
            boot_once_missing="grub-reboot is not on its PATH"
        fi
    elif [ -d "$efivars" ]; then
        boot_once_missing="it did not boot through systemd-boot (no LoaderInfo EFI variable) and has no /boot/grub/grub.cfg"
    else
        boot_once_missing="it has no boot loader nixpipe knows (no EFI variables of systemd-boot, no /boot/grub/grub.cfg)"
    fi
}

# With hold=1, once answered: the next command, one line as ssh would have
# been given it (session.rs's Held), runs over this session once nixpipe
# has checked the answer, the job starting without a session of its own;
# the end of the input instead (refused, or run elsewhere) ends it.
held() {
    [ "$hold" = 1 ] || exit 0
    IFS= read -r next || exit 0
    exec 1>&3 3>&-
    eval "$next"
    exit
}

p=$path
profile=/nix/var/nix/profiles/system
host_facts
# readlink -f prints a path that does not exist too: with no
# /run/current-system (a first deploy), nothing ran before.
current=
[ -e /run/current-system ] && current=$(readlink -f /run/current-system)
hostname=$(cat /proc/sys/kernel/hostname)
case $which in
    rollback)
        # What `nix-env --rollback` goes back to: the highest generation below the current one.
        n=$(readlink "$profile" 2>/dev/null | sed -n 's/^system-\([0-9]*\)-link$/\1/p')
        prev=$(find "${profile%/*}" -maxdepth 1 -name 'system-*-link' 2>/dev/null |
            sed -n 's|.*/system-\([0-9]*\)-link$|\1|p' | sort -n | awk -v n="${n:-0}" '$1 < n' | tail -n 1)
        p=
        [ -n "$prev" ] && p=$(readlink -f "$profile-$prev-link")
        ;;
    previous-bundle)
        p=
        [ -e /etc/nixos/previous-configuration ] && p=$(readlink -f /etc/nixos/previous-configuration)
        ;;
esac
if [ -z "$p" ]; then
    emit probe hostname="$hostname" current="$current"
    held
fi
# Asked in the background while the files below are read: a Nix command
# costs tens of milliseconds to start, and the probe waits for it once.
nix-store --check-validity "$p" >/dev/null 2>&1 &
validity=$!
system=$p bundle=0
# A bundle (nixpipe-bundle) carries its system as toplevel, and bin/switch.
if [ -f "$p/manifest.json" ] && [ -x "$p/bin/switch" ] && [ -e "$p/toplevel" ]; then
    bundle=1
    system=$p/toplevel
fi
nixos=0
[ -f "$system/nixos-version" ] && [ -x "$system/bin/switch-to-configuration" ] && nixos=1
configured=
[ -f "$system/etc/hostname" ] && configured=$(cat "$system/etc/hostname")
has_spec='' specs=''
if [ -n "$spec" ]; then
    has_spec=0
    [ -x "$system/specialisation/$spec/bin/switch-to-configuration" ] && has_spec=1
    specs=$(find "$system/specialisation/" -mindepth 1 -maxdepth 1 2>/dev/null | sed 's|.*/||' | sort | tr '\n' ' ')
fi
toplevel_system=
[ -f "$system/system" ] && toplevel_system=$(cat "$system/system")
# What the host runs natively: a system built for the kernel's own
# architecture, without asking Nix (whose start costs as much as the rest
# of the probe); else Nix says: its own `system` natively, `extra-platforms`
# only through emulation or another machine (binfmt_misc, builders).
native='' emulated=''
if [ "$toplevel_system" = "$machine-linux" ]; then
    native=$toplevel_system
else
    config=$(nix --extra-experimental-features nix-command show-config 2>/dev/null)
    native=$(printf '%s\n' "$config" | sed -n 's/^system = //p')
    emulated=$(printf '%s\n' "$config" | sed -n 's/^extra-platforms = //p')
fi
boot_loader='' boot_once_missing=''
[ "$loader" = 1 ] && boot_once
valid=0
wait "$validity" && valid=1
# Files as they are, whatever they hold: base64, decoded by nixpipe.
encoded() { [ -f "$1" ] && base64 -w0 <"$1"; }
emit probe hostname="$hostname" current="$current" resolved="$p" valid="$valid" bundle="$bundle" nixos="$nixos" \
    configured="$configured" specialisation="$has_spec" specialisations="$specs" system="$toplevel_system" \
    native="$native" emulated="$emulated" inhibitors="$(encoded "$system/switch-inhibitors")" \
    inhibitors-current="$(encoded /run/current-system/switch-inhibitors)" boot-loader="$boot_loader" \
    boot-once-missing="$boot_once_missing"
held
