# The target's side of nixpipe-activate, run as root (directly or through
# sudo). nixpipe starts it, as every script, through session.rs's
# bootstrap, which sets $self to the script's text, so that `launch` can
# keep a copy of it:
#   launch id= who= action= system= program= confirm= mode= root= bootloader= units_policy= lock_wait= once=
#                                       start the job detached, then follow it
#   follow id= log_at= events_at=       the job's log and events from those bytes until it ends
#   confirm id=                         confirm a switch (--confirm-timeout)
#   reject id=                          roll a switch back now (a failed --check)
#   forget generation= previous= default=
#                                       undo a boot once that did not hold
#   job id= who= ... (as launch)        the detached job itself
# (named arguments: args.sh). program is what switches: a system's
# bin/switch-to-configuration, or a bundle's bin/switch. confirm: seconds
# to wait for a confirmation, 0 for none. mode: `set` the profile to
# system, go back one generation (`rollback`), or leave it to the program
# (`bundle`). root: NAME=PATH of the record's GC root (nixpipe-copy's),
# dropped once the profile holds PATH; empty for none. bootloader: 1 to
# pass NIXOS_INSTALL_BOOTLOADER=1. units_policy: `keep` or `roll-back` the
# system when some units failed (exit 4). lock_wait: seconds to wait for
# NixOS's lock. once: the boot loader (systemd-boot, grub) that boots the
# new generation once, its default staying the previous one (--reboot);
# empty to make the new generation the default.
# The job records its events (prelude.sh's format, with log=BYTES last: how
# far the log was written then) in its events file, which only it writes;
# what the switched program prints goes to its log. follow sends both on
# the event channel as frames, `nixpipe-frame log|event LENGTH` and LENGTH
# bytes, each event after the log bytes written before it: what a program
# prints is inside a log frame, and cannot pass for an event. The job holds
# a lock on its `step` file and replaces it at every event (next_step), so
# a follower waiting on it wakes at once.
set -u
state=/run/nixpipe
jobs=$state/jobs
profile=/nix/var/nix/profiles/system

launch() {
    takes id who action system program confirm mode root bootloader units_policy lock_wait once -- "$@"
    d=$jobs/$id
    mkdir -p "$state" "$jobs"
    chmod 0700 "$state" "$jobs"
    # Jobs older than a day have long been reported.
    find "$jobs" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} + 2>/dev/null
    mkdir -m 0700 "$d" || exit 1
    # A full /run stops the job here, saying why, with nothing changed.
    # shellcheck disable=SC2154 # $self: this script, set by session.rs's bootstrap
    if ! err=$({ : >"$d/log" && : >"$d/events" && : >"$d/step" && printf '%s\n' "$self" >"$d/activate.sh"; } 2>&1); then
        rm -rf "$d"
        err=${err##*: }
        # dash's printf says "I/O error" for a full file system.
        [ "$(df -Pk "$state" 2>/dev/null | awk 'NR == 2 { print $4 }')" = 0 ] && err="No space left on device"
        echo "cannot write $d: $err" >&2
        exit 1
    fi
    # Detached from this ssh session, so that a dropped connection cannot stop
    # a switch half way: a transient unit where systemd runs (as nixos-rebuild
    # does), else a session of its own whose parent is init.
    if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
        systemd-run --unit="nixpipe-activate-$id" --description="nixpipe-activate $action $system" --collect --quiet \
            --setenv=PATH="$PATH" -- "$(command -v sh)" "$d/activate.sh" job "$@" 3>&- || exit 1
    else
        (setsid sh "$d/activate.sh" job "$@" </dev/null >/dev/null 2>&1 3>&- &)
    fi
    follow id="$id" log_at=0 events_at=0
}

# send_log END: the log's bytes from $log_at up to byte END, in frames of
# at most 1 MiB (nixpipe takes no longer ones).
send_log() {
    while [ "$1" -gt "$log_at" ]; do
        n=$(($1 - log_at))
        [ "$n" -gt 1048576 ] && n=1048576
        printf 'nixpipe-frame log %s\n' "$n" >&3
        tail -c +"$((log_at + 1))" "$d/log" | head -c "$n" >&3
        log_at=$((log_at + n))
    done
}

# send_events: each whole event line after byte $events_at as a frame,
# after the log bytes written before it (its log= field, the last), so
# that the user reads both in the order they happened. Bytes, not
# characters: LC_ALL=C.
send_events() {
    pos=0
    while IFS= read -r line; do
        pos=$((pos + ${#line} + 1))
        [ "$pos" -le "$events_at" ] && continue
        logged=${line##*"$event_tab"log=}
        case $logged in '' | *[!0-9]*) logged=$log_at ;; esac
        send_log "$logged"
        send_event "$line"
        events_at=$pos
    done <"$d/events"
}

# send_event LINE: one event line as a frame.
send_event() {
    printf 'nixpipe-frame event %s\n%s\n' "$((${#1} + 1))" "$1" >&3
}

# An event of follow's own (KIND KEY=VALUE...), framed.
event() {
    send_event "$(event_line "$@")"
}

# Sends what the job wrote from those bytes on until it ends. Between
# reads it waits on the job's step file: the job holds a lock on it and
# lets go of it at each event and each line the switch prints (see
# next_step and logged) and when it ends, so both are sent as they happen;
# anything else in the log, at the latest 0.2 s after it is written.
follow() {
    takes id log_at events_at -- "$@"
    d=$jobs/$id dead=0 quiet=0
    LC_ALL=C
    export LC_ALL
    [ -d "$d" ] || { event result outcome=gone; exit 0; }
    while :; do
        # Opened before reading: an event written after the read has
        # already let go of this lock, and the wait below ends at once.
        # command: a redirection that fails must not end the shell.
        { command exec 6<"$d/step"; } 2>/dev/null || exec 6</dev/null
        ended=0
        [ -e "$d/done" ] && ended=1
        sent=$log_at.$events_at
        send_events
        send_log "$(wc -c <"$d/log")"
        [ "$ended" = 1 ] && exit 0
        # A sign of life every 50 quiet rounds (about 10 s): nixpipe stops
        # a session that says nothing for --timeout.
        if [ "$sent" = "$log_at.$events_at" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        if [ "$quiet" -ge 50 ]; then
            printf 'nixpipe-frame event 0\n' >&3
            quiet=0
        fi
        if [ -s "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
            dead=0
            flock -s -w 0.2 6 2>/dev/null
            # A flock without -w (busybox): poll.
            [ "$?" -gt 1 ] && sleep 0.2
        else
            # Not started yet (it writes its pid first), or killed without
            # a word: say so after 10 s. The first second in steps of 10 ms,
            # so that a job that starts at once is followed at once.
            dead=$((dead + 1))
            [ "$dead" -gt 145 ] && { event result outcome=vanished; exit 0; }
            if [ "$dead" -le 100 ]; then sleep 0.01; else sleep 0.2; fi
        fi
        exec 6<&-
    done
}

confirm() {
    takes id -- "$@"
    [ -d "$jobs/$id" ] && : >"$jobs/$id/confirmed"
}

reject() {
    takes id -- "$@"
    [ -d "$jobs/$id" ] && : >"$jobs/$id/rejected"
}

# say KIND KEY=VALUE...: an event of the job, in its events file, with
# how far its log was written then; followers are woken for it.
say() {
    event_line "$@" log="$(wc -c <"$d/log")" >>"$d/events"
    next_step
}

# Lets go of the lock on the step file that followers wait on, after
# putting a new, locked one in its place (fd 7) for the next step. Where
# that cannot be done (a full /run), followers see the step at their next
# poll: nothing here may stop the job (`command`: a failed redirection
# does not end the shell; the braces keep 2>/dev/null to that one line).
next_step() {
    { command exec 8>"$d/step.new"; } 2>/dev/null || return 0
    flock 8 && mv -f "$d/step.new" "$d/step" && exec 7>&8
    exec 8>&-
}

# finish OUTCOME [DETAIL [KEY=VALUE...]]: the job's result, its last event.
finish() {
    outcome=$1 detail=${2:-}
    shift $(($# < 2 ? $# : 2))
    say result outcome="$outcome" detail="$detail" "$@"
    : >"$d/done"
    exit 0
}

# switch PROGRAM ACTION [BOOTLOADER]: runs the switch; its exit status.
# $switch_at: where its output starts in the log. What it prints reaches
# the log line by line through a FIFO (logged), each line waking the
# followers as an event does, so that the user reads it as it is printed;
# where no FIFO can be made, it goes to the log as it is.
switch() {
    say switching action="$2" system="${1%/bin/*}"
    switch_at=$(wc -c <"$d/log")
    rm -f "$d/output"
    mkfifo -m 0600 "$d/output" 2>/dev/null || {
        run_switch "$@"
        return
    }
    run_switch "$@" >"$d/output" 2>&1 &
    switched=$!
    logged <"$d/output"
    wait "$switched"
}

# run_switch PROGRAM ACTION [BOOTLOADER]. The locks stay with this job, not
# with what the switch starts; the switch never sees the event channel.
# NIXOS_INSTALL_BOOTLOADER: only when asked (--install-bootloader), as
# nixos-rebuild passes it.
run_switch() {
    if [ "${3:-0}" = 1 ]; then
        NIXOS_INSTALL_BOOTLOADER=1 "$1" "$2" 3>&- 7>&- 9>&-
    else
        "$1" "$2" 3>&- 7>&- 9>&-
    fi
}

# Copies its input into the log (this job's stdout) line by line, waking
# the followers at each of the first 100 lines and then at every 20th:
# waking costs two programs, and must not slow a chatty switch (the
# followers still look every 0.2 s, and at the job's next event).
logged() {
    lines=0
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
        lines=$((lines + 1))
        if [ "$lines" -le 100 ] || [ $((lines % 20)) = 0 ]; then next_step; fi
    done
    rm -f "$d/output"
}

# Whether the switch that just failed activated anything, by what the
# host shows rather than by its exit status (switch-to-configuration-ng
# exits 1 both before and after activating; the Perl one dies with errno
# anywhere): /run/current-system is no longer what ran before (NixOS's
# activation script links it), or the switch said it stopped units or ran
# the activation script (both print these before they act).
activated() {
    now=
    [ -e /run/current-system ] && now=$(readlink -f /run/current-system)
    [ "$now" != "$previous" ] && return 0
    tail -c +"$((switch_at + 1))" "$d/log" |
        grep -q -e '^activating the configuration' -e '^stopping the following units' -e '^stopping swap device'
}

generation() {
    n=${1#system-}
    echo "${n%-link}"
}

# Puts the profile back where it was, without the failed generation; sets
# $rollback to what came of it.
put_profile_back() {
    rollback=rolled-back
    now=$(readlink "$profile" 2>/dev/null) || now=
    [ "$now" = "$previous_link" ] && return
    if [ -n "$previous_link" ]; then
        nix-env -p "$profile" --switch-generation "$(generation "$previous_link")" || rollback='rollback-failed'
    else
        rm -f "$profile" || rollback='rollback-failed'
    fi
    # A generation that failed leaves the profile, and so the boot menu.
    if [ "$mode" = set ] && [ -n "$now" ]; then rm -f "${profile%/*}/$now"; fi
}

# Puts the profile back and activates what ran before; sets $rollback to
# what came of it.
roll_back() {
    say rolling-back
    put_profile_back
    case $action in
        switch | test) back=$previous ;;
        boot) back=; [ -e "$profile" ] && back=$(readlink -f "$profile") ;;
    esac
    if [ -z "$back" ]; then
        [ "$rollback" = rolled-back ] && rollback=nothing-to-reactivate
        return
    fi
    switch "$back/bin/switch-to-configuration" "$action" || rollback='rollback-failed'
}

confirmed_within() {
    ticks=$(($1 * 5))
    while [ "$ticks" -gt 0 ]; do
        [ -e "$d/confirmed" ] && return 0
        [ -e "$d/rejected" ] && return 1
        sleep 0.2
        ticks=$((ticks - 1))
    done
    [ -e "$d/confirmed" ]
}

nixos_lock=/run/nixos/switch-to-configuration.lock

# Who holds NixOS's own lock: its pid and command, from /proc/locks.
lock_holder() {
    inode=$(stat -c %i "$nixos_lock" 2>/dev/null) || return 0
    pid=$(awk -v inode="$inode" '$2 == "FLOCK" { n = split($6, f, ":"); if (f[n] == inode) { print $5; exit } }' /proc/locks)
    [ -n "$pid" ] && printf 'pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
}

# Waits up to $lock_wait seconds for NixOS's lock to be free (another
# switch-to-configuration runs: nixos-rebuild, an auto-upgrade), saying who
# holds it once. Fails when it stays taken.
wait_for_nixos_lock() {
    [ -e "$nixos_lock" ] || return 0
    waited=0
    until flock -n "$nixos_lock" true 2>/dev/null; do
        [ "$waited" = 0 ] && say waiting-for-lock holder="$(lock_holder)"
        waited=$((waited + 1))
        [ "$waited" -gt "$lock_wait" ] && return 1
        sleep 1
    done
}

# The units switch-to-configuration said failed, system and user units, as
# it says them.
failed_units() {
    tail -c +"$((switch_at + 1))" "$d/log" |
        sed -n 's/.*the following \(user \)\{0,1\}units failed: //p' | awk 'NR > 1 { printf ", " } { printf "%s", $0 }'
}

# The record's GC root (nixpipe-copy's), once the profile holds its path.
drop_gc_root() {
    [ -n "$root" ] || return 0
    name=${root%%=*} path=${root#*=}
    for link in "/nix/var/nix/gcroots/nixpipe/$name" /nix/var/nix/gcroots/per-user/*/"nixpipe-$name"; do
        [ "$(readlink "$link" 2>/dev/null)" = "$path" ] && rm -f "$link"
    done
}

# What a switch's exit status means (switch-to-configuration-ng's codes),
# with what the host shows; finishes the job unless it went well or its
# failed units are kept.
judge() {
    status=$1
    [ "$status" = 0 ] && return
    was_activated=0
    case $action in
        # Neither activates anything.
        dry-activate | check) ;;
        *) activated && was_activated=1 ;;
    esac
    say exited status="$status" activated="$was_activated"
    case $action in
        dry-activate | check)
            [ "$status" = 100 ] && finish init-changed nothing-changed
            [ "$action" = check ] && grep -q 'Usage:' "$d/log" && finish no-check-action
            finish failed nothing-changed
            ;;
    esac
    if [ "$was_activated" = 0 ]; then
        case $status/$action in
            # The init interface changed, before anything was activated:
            # after switch the profile and boot loader hold the new system,
            # a reboot activates it; after test nothing points at it.
            100/switch)
                drop_gc_root
                finish reboot-needed
                ;;
            100/test) finish init-changed nothing-changed ;;
            # A pre-switch check or the boot loader failed: only the
            # profile goes back.
            1/*)
                put_profile_back
                finish not-activated "$rollback"
                ;;
            # Its own lock was taken after all.
            11/*)
                put_profile_back
                finish busy "$(lock_holder)"
                ;;
        esac
    fi
    # Active, but some units failed: kept or rolled back, as asked.
    if [ "$status" = 4 ]; then
        units=$(failed_units)
        if [ "$units_policy" = keep ]; then
            kept_units=$units
            return
        fi
        roll_back
        finish units-failed "$rollback" units="$units"
    fi
    # Activated, even in part, or a status nobody documents (it may have):
    # the whole rollback.
    roll_back
    finish failed "$rollback"
}

# The boot of --reboot, once: the profile holds the new generation, but
# the boot loader's default stays the previous generation, whose own
# switch-to-configuration boot writes the entries of every generation (the
# new one's too) and makes its own entry the default (systemd-boot-builder.py:
# is_default; install-grub.pl: "NixOS - Default"); then the new
# generation's entry is made the next boot, and only the next one.
boot_once() {
    default=$(readlink -f "${profile%/*}/$previous_link")
    switch "$default/bin/switch-to-configuration" boot "$bootloader"
    judge "$?"
    generation=$(generation "$(readlink "$profile")")
    if ! set_one_shot "$generation" >"$d/once.err" 2>&1; then
        why=$(tr '\n' ' ' <"$d/once.err")
        cat "$d/once.err"
        put_profile_back
        # The entries again, without the new generation's.
        switch "$default/bin/switch-to-configuration" boot || rollback='rollback-failed'
        finish no-boot-once "$rollback" why="${why% }"
    fi
    say boot-once generation="$generation" previous="$(generation "$previous_link")" default="$default" entry="$entry"
}

# set_one_shot GENERATION: the boot loader boots that generation's entry at
# the next boot only ($entry: which). systemd-boot: bootctl sets the
# LoaderEntryOneShot EFI variable, which systemd-boot reads and deletes.
# GRUB: grub-reboot sets next_entry in grubenv, which NixOS's grub.cfg
# boots once and clears (save_env).
set_one_shot() {
    case $once in
        systemd-boot)
            entry=nixos-generation-$1.conf
            file=
            for esp in /boot /efi /boot/efi; do
                [ -f "$esp/loader/entries/$entry" ] && file=$esp/loader/entries/$entry && break
            done
            [ -n "$file" ] || { echo "no boot entry $entry in /boot, /efi or /boot/efi"; return 1; }
            grep -q "init=$system/init" "$file" || { echo "$file does not boot $system"; return 1; }
            bootctl set-oneshot "$entry"
            ;;
        grub)
            title=$(sed -n "s/^[[:space:]]*menuentry \"\(NixOS - Configuration $1 (.*)\)\".*/\1/p" /boot/grub/grub.cfg | head -n 1)
            [ -n "$title" ] || { echo "no menu entry for generation $1 in /boot/grub/grub.cfg"; return 1; }
            entry="NixOS - All configurations>$title"
            grub-reboot "$entry"
            ;;
        *)
            echo "no boot loader '$once' nixpipe knows"
            return 1
            ;;
    esac
}

# After a boot once that did not hold: the profile back on generation
# PREVIOUS where it still holds GENERATION, GENERATION deleted, and the boot
# loader's entries written again, without it, by DEFAULT's
# switch-to-configuration boot.
forget() {
    takes generation previous default -- "$@"
    if [ "$(readlink "$profile")" = "system-$generation-link" ]; then
        nix-env -p "$profile" --switch-generation "$previous" || exit 1
    fi
    rm -f "${profile%/*}/system-$generation-link"
    "$default/bin/switch-to-configuration" boot
}

job() {
    takes id who action system program confirm mode root bootloader units_policy lock_wait once -- "$@"
    d=$jobs/$id
    exec >>"$d/log" 2>&1 </dev/null
    # Locked for as long as the job runs: its end wakes the followers too.
    { command exec 7>"$d/step"; } 2>/dev/null && flock 7
    echo $$ >"$d/pid"
    say started
    exec 9>>"$state/lock"
    if ! flock -n 9; then
        finish locked "$(cat "$state/lock.owner" 2>/dev/null)"
    fi
    printf '%s since %s\n' "$who" "$(date '+%Y-%m-%d %H:%M:%S')" >"$state/lock.owner"
    previous_link=$(readlink "$profile" 2>/dev/null) || previous_link=
    # readlink -f prints a path that does not exist too: with no
    # /run/current-system (a first deploy), nothing ran before.
    previous=
    [ -e /run/current-system ] && previous=$(readlink -f /run/current-system)
    say previous path="$previous"
    # Before the profile changes: a busy NixOS lock changes nothing.
    wait_for_nixos_lock || finish busy "$(lock_holder)"
    case $mode in
        set)
            case $action in
                switch | boot) nix-env -p "$profile" --set "$system" || finish failed profile ;;
            esac
            ;;
        rollback)
            nix-env -p "$profile" --rollback || finish failed profile
            system=$(readlink -f "$profile")
            program=$system/bin/switch-to-configuration
            ;;
    esac
    kept_units=
    if [ -n "$once" ] && [ -n "$previous_link" ]; then
        boot_once
    else
        switch "$program" "$action" "$bootloader"
        judge "$?"
    fi
    if [ "$confirm" -gt 0 ]; then
        say awaiting-confirmation seconds="$confirm"
        if ! confirmed_within "$confirm"; then
            roll_back
            [ -e "$d/rejected" ] && finish rejected "$rollback"
            finish unconfirmed "$rollback"
        fi
    fi
    case $action in
        switch | boot) drop_gc_root ;;
    esac
    case $action in
        switch | boot | test) say needs-reboot value="$(needs_reboot "$system")" ;;
    esac
    [ -n "$kept_units" ] && finish units-failed kept units="$kept_units"
    finish ok
}

case ${1-} in
    launch | follow | confirm | reject | forget | job) "$@" ;;
    *)
        echo "nixpipe: '${1-}' is not a verb of the job script" >&2
        exit 2
        ;;
esac
