#!/bin/busybox sh
# /init of the testbed VMs' initrd (scripts/vm-kit.sh packs it): the
# stand-in of NixOS's stage-1-init.sh, laid out as qemu-vm.nix lays out a
# VM (../shared/reference/real-vms.md). The root is an overlay: a Debian
# release root shared over 9p (tag `rootfs`, read-only; it brings sshd and
# the release's Nix) under a tmpfs. /nix/store, chosen with vm.store=:
#   overlay  (default, as virtualisation.writableStore) the host's store
#            (9p tag `nix-store`) at /nix/.ro-store under a tmpfs
#            /nix/.rw-store: paths copied in land in the tmpfs
#   ro       the host's store, read-only (writableStore = false)
# A VM that boots through a boot loader (qemu-vm.nix's useBootLoader) keeps
# what it changes across reboots: with vm.state=DEVICE, the root's and the
# store's writable layers are on that ext4 disk instead of tmpfs.
# vm.panic=1 stands for a generation that cannot boot: this script ends
# and the kernel panics.
# Then it runs the system's stage 2, `init=` on the kernel command line
# (a toplevel's init), as PID 1 in the new root. Anything failing ends this
# script: the kernel panics, and with panic=-1 and qemu's -no-reboot, qemu
# exits, so that whatever waits for the VM fails at once.
# shellcheck shell=sh

/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /mnt
/bin/busybox --install -s
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "nixpipe-vm stage 1: $*" >/dev/console
    exit 1
}

init='' store=overlay state='' panic=0
# shellcheck disable=SC2013 # the command line is words
for param in $(cat /proc/cmdline); do
    case $param in
        init=*) init=${param#init=} ;;
        vm.store=*) store=${param#vm.store=} ;;
        vm.state=*) state=${param#vm.state=} ;;
        vm.panic=1) panic=1 ;;
        vm.probe=1)
            echo "nixpipe-vm: probe ok" >/dev/console
            poweroff -f
            ;;
    esac
done
[ -n "$init" ] || fail "no init= on the kernel command line"
[ "$panic" = 0 ] || fail "vm.panic=1: this generation does not boot"

# shellcheck disable=SC2013 # one name per line
for module in $(cat /modules); do
    # efivarfs loads under EFI firmware only.
    modprobe "$module" || [ "$module" = efivarfs ] || fail "cannot load module $module"
done

p9='trans=virtio,version=9p2000.L,msize=16384,cache=loose'
mkdir -p /mnt/lower /mnt/rw /mnt/root
mount -t 9p -o "$p9,ro" rootfs /mnt/lower || fail "cannot mount the root (9p tag rootfs)"
if [ -n "$state" ]; then
    mount -t ext4 "$state" /mnt/rw || fail "cannot mount the VM's disk $state (vm.state=)"
else
    mount -t tmpfs -o mode=0755,size=256m tmpfs /mnt/rw
fi
mkdir -p /mnt/rw/upper /mnt/rw/work /mnt/rw/store
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root ||
    fail "cannot mount the root's overlay"

nix=/mnt/root/nix
mkdir -p "$nix/.ro-store" "$nix/.rw-store" "$nix/store"
case $store in
    overlay)
        mount -t 9p -o "$p9,ro" nix-store "$nix/.ro-store" || fail "cannot mount the host's store (9p tag nix-store)"
        if [ -n "$state" ]; then
            mount --bind /mnt/rw/store "$nix/.rw-store"
        else
            mount -t tmpfs -o mode=0755 tmpfs "$nix/.rw-store"
        fi
        mkdir -p "$nix/.rw-store/store" "$nix/.rw-store/work"
        mount -t overlay overlay -o "lowerdir=$nix/.ro-store,upperdir=$nix/.rw-store/store,workdir=$nix/.rw-store/work" \
            "$nix/store" || fail "cannot mount the store's overlay"
        ;;
    ro)
        mount -t 9p -o "$p9,ro" nix-store "$nix/.ro-store" || fail "cannot mount the host's store (9p tag nix-store)"
        mount --bind "$nix/.ro-store" "$nix/store"
        ;;
    *) fail "unknown vm.store=$store: overlay or ro" ;;
esac
[ -x "/mnt/root$init" ] || [ -L "/mnt/root$init" ] || fail "no stage 2 at $init"

for fs in /dev /proc /sys; do
    mount --move "$fs" "/mnt/root$fs"
done
exec switch_root /mnt/root "$init"
