# Writes deployment.keys, as root, for nixpipe-activate --keys:
#   keys.sh NAME DIR USER GROUP MODE SIZE [NAME DIR USER GROUP MODE SIZE]...
# stdin: the keys' contents one after the other, SIZE bytes each. Each is
# written to a temporary file in DIR that has USER:GROUP and MODE before a
# byte is in it, then renamed to DIR/NAME: nobody ever reads a half-written
# key, or one with the wrong owner or mode. Nothing here prints a key.
# Answers with a `key` event per key in place; stops at the first failure.
set -eu
umask 077
while [ "$#" -ge 6 ]; do
    name=$1 dir=$2 user=$3 group=$4 mode=$5 size=$6
    shift 6
    # A directory made here is root's and open (0755), as /var/lib is: each
    # key's own mode keeps it, and its user must be able to reach it.
    [ -d "$dir" ] || (umask 022 && mkdir -p "$dir")
    tmp=$(mktemp "$dir/.nixpipe-key.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    chown "$user:$group" "$tmp"
    chmod "$mode" "$tmp"
    head -c "$size" >"$tmp"
    got=$(wc -c <"$tmp")
    [ "$got" -eq "$size" ] || { echo "key $name: $got of $size bytes arrived" >&2; exit 1; }
    mv -f "$tmp" "$dir/$name"
    trap - EXIT
    emit key name="$name"
done
