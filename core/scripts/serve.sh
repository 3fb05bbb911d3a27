# nix-store --serve --write for nixpipe-copy, after what costs no round trip:
# a GC root for each record copied (so that a garbage collection between
# this copy and the activation cannot delete it: the serve session's own
# temporary roots die with it), and for --compress zstd, one byte saying
# whether zstd is on the PATH.
#   serve.sh plain|probe-zstd|zstd|roots NAME=PATH... -- NIX-STORE-OPTIONS...
# zstd: every request arrives zstd-compressed; roots: the roots only, for a
# copy another program makes (nix-copy-closure on a --via relay). A root is made before its
# path is valid (a root to a missing path protects nothing, and costs
# nothing), in /nix/var/nix/gcroots/nixpipe as root, else in the login
# user's per-user GC root directory; where neither can be written, none.
how=$1
shift
if [ "$(id -u)" = 0 ]; then
    roots=/nix/var/nix/gcroots/nixpipe prefix=
else
    roots=/nix/var/nix/gcroots/per-user/$(id -un) prefix=nixpipe-
fi
mkdir -p "$roots" 2>/dev/null
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    root=$roots/$prefix${1%%=*}
    # Replaced by rename: never a moment without the root.
    ln -sfn "${1#*=}" "$root.new" 2>/dev/null && mv -T "$root.new" "$root" 2>/dev/null
    shift
done
[ "$#" -gt 0 ] && shift
case $how in
    roots) exit 0 ;;
    plain) exec nix-store --serve --write "$@" ;;
    probe-zstd)
        if command -v zstd >/dev/null 2>&1; then printf Z; else printf N; fi
        exec nix-store --serve --write "$@"
        ;;
    zstd) zstd -dcq | exec nix-store --serve --write "$@" ;;
esac
