# The closures of two systems, for the diff of nixpipe-activate --diff:
#   requisites.sh BEFORE AFTER
# One `requisite` event per path (as emit writes them: store paths hold no
# tabs), marked with the system it is in.
set -e
for which in before after; do
    nix-store --query --requisites "$1" |
        awk -v which="$which" '{ printf "nixpipe-event\trequisite\tof=%s\tpath=%s\n", which, $0 }' >&3
    shift
done
