# The closures of two systems, for the diff of nixpipe-activate --diff:
#   requisites.sh before=SYSTEM after=SYSTEM
# One `requisite` event per path (as emit writes them: store paths hold no
# tabs), marked with the system it is in.
set -e
takes before after -- "$@"
for which in before after; do
    case $which in
        before) system=$before ;;
        *) system=$after ;;
    esac
    nix-store --query --requisites "$system" |
        awk -v which="$which" '{ printf "nixpipe-event\trequisite\tof=%s\tpath=%s\n", which, $0 }' >&3
done
