# Writes deployment.keys, as root, for nixpipe-activate --keys:
#   keys.sh -- NAME DIR USER GROUP MODE SIZE [NAME DIR USER GROUP MODE SIZE]...
# stdin: the keys' contents one after the other, SIZE bytes each.
# Nothing here follows a link another user could have put in the way:
# every directory of DIR must be one only root (DIR itself: root or USER)
# can write, DIR is opened once and worked in through that descriptor
# (/proc/$$/fd/4), the temporary file is created there with O_EXCL (set
# -C) and gets USER:GROUP and MODE through its own descriptor before its
# first byte, then is renamed into place within DIR. Nobody ever reads a
# half-written key, or one with the wrong owner or mode. A cut upload
# leaves nothing: the temporary file goes on every exit, and the next
# upload removes any an earlier one left. Nothing here prints a key.
# Answers with a `key` event per key in place; stops at the first failure.
set -eu
umask 077
# A connection cut mid-upload must not kill the shell before it cleans up:
# a write to the closed channel fails instead.
trap '' PIPE
tmp=
trap 'if [ -n "$tmp" ]; then rm -f "/proc/$$/fd/4/$tmp"; fi' EXIT
trap 'exit 1' HUP INT TERM

refuse() {
    echo "$*; nothing written" >&2
    exit 1
}

# Whether someone other than root (and, for DIR itself, the key's owner)
# can write the directory $1: its owner, its group's write bit (a group
# other than root's), the others' write bit.
check_dir() {
    read -r dir_owner dir_group dir_mode <<EOF
$(stat -c '%u %g %a' -- "$1")
EOF
    dir_mode=$((0$dir_mode))
    if [ "$dir_owner" != 0 ] && [ "$dir_owner" != "$2" ]; then
        refuse "$1 belongs to uid $dir_owner, who could put a link in the key's way"
    fi
    if [ $((dir_mode & 2)) != 0 ] || { [ $((dir_mode & 16)) != 0 ] && [ "$dir_group" != 0 ]; }; then
        refuse "$1 can be written by users other than root and the key's owner"
    fi
}

# Checks every directory of $1 from / down: a real directory, not a link,
# that nobody but root (the last: root or uid $2) can write. What does not
# exist yet is made by root below, as root's.
check_path() {
    p=
    rest=${1#/}
    check_dir / 0
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        rest=${rest#"$part"}
        rest=${rest#/}
        [ -n "$part" ] || continue
        p=$p/$part
        [ -e "$p" ] || [ -L "$p" ] || return 0
        [ -L "$p" ] && refuse "$p is a symbolic link"
        [ -d "$p" ] || refuse "$p is not a directory"
        if [ "$p" = "$1" ]; then check_dir "$p" "$2"; else check_dir "$p" 0; fi
    done
}

takes ... -- "$@"
shift "$taken"
[ $(($# % 6)) = 0 ] || refuse "the keys come in groups of six words, not $#"
while [ "$#" -ge 6 ]; do
    name=$1 dir=$2 user=$3 group=$4 mode=$5 size=$6
    shift 6
    uid=$(id -u "$user") || refuse "key $name: no user $user"
    check_path "$dir" "$uid"
    # A directory made here is root's and open (0755), as /var/lib is: each
    # key's own mode keeps it, and its user must be able to reach it.
    [ -d "$dir" ] || (umask 022 && mkdir -p -- "$dir")
    command exec 4<"$dir" || refuse "key $name: cannot open $dir"
    # What was opened is the directory checked: no link was swapped in.
    [ "$(readlink "/proc/$$/fd/4")" = "$dir" ] || refuse "key $name: $dir changed while it was opened"
    # What an earlier upload left when it was cut (ours by name, files
    # only: find never follows a link).
    find "/proc/$$/fd/4/" -mindepth 1 -maxdepth 1 -type f -name '.nixpipe-key.*' -exec rm -f {} + 2>/dev/null || :
    tries=0
    until {
        candidate=.nixpipe-key.$$.$tries
        set -C
        command exec 5>"/proc/$$/fd/4/$candidate"
    } 2>/dev/null; do
        set +C
        tries=$((tries + 1))
        [ "$tries" -lt 10 ] || refuse "key $name: cannot create a file in $dir"
    done
    set +C
    tmp=$candidate
    # Through the file's own descriptor: whatever is put at its name now.
    chown "$user:$group" "/proc/$$/fd/5"
    chmod "$mode" "/proc/$$/fd/5"
    head -c "$size" >&5
    got=$(stat -L -c %s "/proc/$$/fd/5")
    [ "$got" -eq "$size" ] || refuse "key $name: $got of $size bytes arrived"
    # Its name still ours (the directory's owner could have put another
    # file there): only then renamed into place, within the directory.
    [ "$(stat -L -c %d:%i "/proc/$$/fd/5")" = "$(stat -c %d:%i "/proc/$$/fd/4/$tmp" 2>/dev/null)" ] ||
        refuse "key $name: its temporary file in $dir was replaced while it was written"
    exec 5>&-
    mv -f -T "/proc/$$/fd/4/$tmp" "/proc/$$/fd/4/$name"
    tmp=
    exec 4<&-
    emit key name="$name"
done
