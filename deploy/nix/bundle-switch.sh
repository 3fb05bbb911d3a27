#!@shell@
# Switches this machine to the system of the bundle @out@ and keeps the
# bundle as /etc/nixos/current-configuration (a GC root, replaced atomically;
# the one before kept as /etc/nixos/previous-configuration). Run as root:
#   bin/switch [switch|boot|test|dry-activate]
set -e
bundle=@out@
# The store path itself: nix-env would take $bundle/toplevel for the bundle.
toplevel=$(readlink -f "$bundle/toplevel")
action=${1:-switch}
case $action in
    switch | boot) nix-env --profile /nix/var/nix/profiles/system --set "$toplevel" ;;
esac
"$toplevel/bin/switch-to-configuration" "$action"
case $action in
    switch | boot)
        mkdir -p /etc/nixos
        current=$(readlink /etc/nixos/current-configuration || true)
        if [ -n "$current" ] && [ "$current" != "$bundle" ]; then
            nix-store --realise "$current" --add-root /etc/nixos/previous-configuration --indirect >/dev/null
        fi
        nix-store --realise "$bundle" --add-root /etc/nixos/current-configuration --indirect >/dev/null
        ;;
esac
