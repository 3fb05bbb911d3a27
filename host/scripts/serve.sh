# A store's server for nixpipe-copy, after what costs no round trip: a GC
# root for each record copied (so that a garbage collection between this
# copy and the activation cannot delete it: the session's own temporary
# roots die with it), and for --compress zstd, one byte saying whether zstd
# is on the PATH.
#   serve.sh protocol=PROTOCOL how=HOW -- NAME=PATH... -- NIX-OPTIONS...
#   serve.sh protocol=PROTOCOL how=read -- PATH... -- NIX-OPTIONS...
# PROTOCOL: serve (nix-store --serve), daemon (nix-daemon --stdio), or auto:
# serve where this nix-store still has --serve, else daemon, said first in
# one byte, S or D. HOW: read (a reader of the closures of PATH...; over the
# daemon protocol, their closure comes first), write, probe-zstd (write,
# after Z or N),
# zstd (write; every request arrives zstd-compressed), or roots: the roots
# only, for a copy another program makes (nix-copy-closure on a --via
# relay). A root is made before its path is valid (a root to a missing
# path protects nothing, and costs nothing), in /nix/var/nix/gcroots/nixpipe
# as root, else in the login user's per-user GC root directory; where
# neither can be written, none.
takes protocol how ... -- "$@"
shift "$taken"
if [ "$how" = read ]; then
    # The paths whose closure the reader wants, not roots.
    wanted=
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
        wanted="$wanted $1"
        shift
    done
else
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
fi
[ "$#" -gt 0 ] && shift
[ "$how" = roots ] && exit 0

if [ "$protocol" = auto ]; then
    # Whether this nix-store speaks the serve protocol, by what it does,
    # whatever it says when it does not (an unknown flag, "no longer
    # supported" after NixOS/nix#16185): given the serve greeting
    # (SERVE_MAGIC_1 and a version, little-endian u64s), a server answers
    # SERVE_MAGIC_2 before it reads on.
    answer=$(printf '\353\235\014\071\000\000\000\000\006\002\000\000\000\000\000\000' |
        nix-store --serve 2>/dev/null | head -c 8 | od -An -tx1 | tr -d ' \n')
    if [ "$answer" = cbee525400000000 ]; then
        protocol=serve
        printf S
    else
        protocol=daemon
        printf D
    fi
fi
if [ "$how" = read ] && [ "$protocol" = daemon ]; then
    # The daemon has no closure query: the closure comes first, a path a
    # line, then an empty line (nothing when a path is not valid: the
    # reader then asks for each path, and names the one missing).
    # shellcheck disable=SC2086 # one argument per path
    nix-store --query --requisites $wanted 2>/dev/null
    echo
fi
server() {
    case $protocol in
        daemon) exec nix-daemon --stdio "$@" ;;
        *) [ "$how" = read ] && exec nix-store --serve "$@"; exec nix-store --serve --write "$@" ;;
    esac
}
case $how in
    probe-zstd)
        if command -v zstd >/dev/null 2>&1; then printf Z; else printf N; fi
        server "$@"
        ;;
    zstd) zstd -dcq | server "$@" ;;
    *) server "$@" ;;
esac
