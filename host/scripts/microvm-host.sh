# The host's side of nixpipe-microvm, run as root: microvm.nix's layout of
# /var/lib/microvms, kept as microvm.nix keeps it. Entry points:
#   install name= runner= restart=   point name's current at runner (auto|always|never restart)
#   list                             a `vm` event per VM: name current valid booted running
#   remove name= purge=              stop it, drop its links and GC roots (and its state if purge=1)
# The answers are events (prelude.sh): `installed`, `vm`, `removed`.
set -eu
dir=/var/lib/microvms
roots=/nix/var/nix/gcroots/microvm
unit() { echo "microvm@$1.service"; }

# microvm.nix's owner and modes, where its user and group exist.
own() {
    if id -u microvm >/dev/null 2>&1 && getent group kvm >/dev/null 2>&1; then
        chown -h microvm:kvm "$@"
    fi
}

# link TARGET PATH: PATH -> TARGET, replaced by rename (never removed first),
# untouched when it already points there.
link() {
    [ "$(readlink "$2" 2>/dev/null || true)" = "$1" ] && return 0
    ln -sfn "$1" "$2.nixpipe-new"
    mv -T "$2.nixpipe-new" "$2"
}

running() { systemctl is-active --quiet "$(unit "$1")" 2>/dev/null; }

install() {
    takes name runner restart -- "$@"
    d=$dir/$name
    mkdir -p "$dir" "$roots"
    [ -d "$d" ] || { mkdir "$d"; own "$d"; }
    chmod 0775 "$dir"
    own "$dir"
    current=$(readlink "$d/current" 2>/dev/null || true)
    changed=0
    if [ "$current" != "$runner" ]; then
        changed=1
        if [ -n "$current" ]; then
            link "$current" "$d/old"
            own "$d/old"
        fi
        link "$runner" "$d/current"
        own "$d/current"
    fi
    link "$d/current" "$roots/$name"
    link "$d/booted" "$roots/booted-$name"
    link "$d/old" "$roots/old-$name"
    booted=$(readlink "$d/booted" 2>/dev/null || true)
    case $restart in
        always) go=1 ;;
        never) go=0 ;;
        auto) if running "$name" && [ "$booted" != "$runner" ]; then go=1; else go=0; fi ;;
    esac
    [ "$go" = 1 ] && systemctl restart "$(unit "$name")"
    emit installed changed="$changed" previous="$current" restarted="$go"
}

list() {
    takes -- "$@"
    [ -d "$dir" ] || return 0
    for d in "$dir"/*/; do
        d=${d%/}
        [ -e "$d/current" ] || [ -L "$d/current" ] || continue
        name=${d##*/}
        current=$(readlink "$d/current" 2>/dev/null || true)
        valid=0
        nix-store --check-validity "$current" 2>/dev/null && valid=1
        booted=$(readlink "$d/booted" 2>/dev/null || true)
        run=0
        running "$name" && run=1
        # The guest system of the current runner: what a VM switched in
        # place (switch --vm) runs, although it booted another runner.
        system=$(readlink -f "$current/share/microvm/system" 2>/dev/null || true)
        emit vm name="$name" current="$current" valid="$valid" booted="$booted" running="$run" system="$system"
    done
}

remove() {
    takes name purge -- "$@"
    d=$dir/$name
    [ -d "$d" ] || { emit removed found=0; return 0; }
    if running "$name"; then systemctl stop "$(unit "$name")"; fi
    rm -f "$roots/$name" "$roots/booted-$name" "$roots/old-$name" "$d/current" "$d/old" "$d/booted"
    if [ "$purge" = 1 ]; then rm -rf "$d"; fi
    emit removed found=1
}

case ${1-} in
    install | list | remove) "$@" ;;
    *)
        echo "nixpipe: '${1-}' is not a verb of the microvm host script" >&2
        exit 2
        ;;
esac
