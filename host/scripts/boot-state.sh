# Which boot of the host this is, and what runs: a `boot` event. In a
# container the boot id is the machine's, so PID 1's start time (in clock
# ticks since the kernel booted) tells a restarted one too.
takes -- "$@"
current='' booted=''
[ -e /run/current-system ] && current=$(readlink -f /run/current-system)
[ -e /run/booted-system ] && booted=$(readlink -f /run/booted-system)
emit boot id="$(cat /proc/sys/kernel/random/boot_id)" pid1="$(cut -d' ' -f22 /proc/1/stat)" current="$current" booted="$booted"
