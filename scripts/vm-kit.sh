#!/usr/bin/env bash
# vm-kit.sh DIR: what the testbed's real VMs boot, made once in DIR (the
# stand-in nixpkgs' VM runners read it; ../shared/reference/real-vms.md):
#   vmlinux     Debian's kernel (the one linux-image-amd64 depends on) as the
#               ELF qemu boots directly (PVH, with qboot): 3 s faster than
#               the bzImage through SeaBIOS
#   bzImage     the same kernel as it ships, for the VMs that boot through a
#               boot loader (systemd-boot under OVMF, GRUB under SeaBIOS)
#   initrd.gz   static busybox, the modules for virtio, 9p and overlay, and
#               for those VMs' disks (virtio-blk, ext4, vfat, efivarfs), and
#               scripts/vm-stage-1.sh as /init
#   accel       `kvm` when a test boot under KVM powered off cleanly within
#               20 s, else `tcg` (this machine's /dev/kvm is a nested PVM that
#               cannot run stock kernels: qemu stops instead of failing)
# Nothing is installed into /boot. DIR appears whole or not at all; a DIR
# made by another version of this script or of the stage-1 init is made again.
set -euo pipefail

out=${1:?usage: vm-kit.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
# The version: this script and the init it packs.
version=$(cat "$0" "$here/vm-stage-1.sh" | sha256sum | cut -c1-16)
[ "$(cat "$out/version" 2>/dev/null)" != "$version" ] || exit 0

for program in qemu-system-x86_64 busybox xz dpkg-deb apt-get; do
    command -v "$program" >/dev/null || { echo "vm-kit: $program is missing (make test installs it)" >&2; exit 1; }
done
busybox=$(command -v busybox)

tmp=$(mktemp -d "${out%/}.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$package" ] || { echo "vm-kit: apt knows no kernel that linux-image-amd64 depends on" >&2; exit 1; }
kver=${package#linux-image-}
# Up to bookworm one package holds the kernel and its modules; from 2026
# sid splits them into linux-binary-KVER (usr/lib/modules/KVER/vmlinuz) and
# linux-modules-KVER.
packages=$package
for split in "linux-binary-$kver" "linux-modules-$kver"; do
    apt-cache show "$split" >/dev/null 2>&1 && packages="$packages $split"
done
echo "vm-kit: fetching $packages (once)" >&2
# shellcheck disable=SC2086 # a list of package names
apt-get download -qq -o APT::Sandbox::User=root $packages
# Only the kernel and the modules the VM loads (those the kernel has built
# in are not there), in loading order.
modules='virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio failover net_failover
    virtio_net virtio-rng netfs fscache 9pnet 9pnet_virtio 9p overlay
    virtio_blk crc16 crc32c_generic libcrc32c mbcache jbd2 ext4 fat vfat nls_cp437 nls_ascii nls_utf8 nls_iso8859-1 efivarfs'
patterns=('./boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz')
for m in $modules; do patterns+=("./lib/modules/*/$m.ko*" "./usr/lib/modules/*/$m.ko*"); done
mkdir deb
for deb in ./*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C deb --wildcards "${patterns[@]}" 2>/dev/null || true
done
vmlinuz=$({ find deb -path '*/boot/vmlinuz-*' -type f -o -path '*/modules/*/vmlinuz' -type f || true; } | head -n 1)
[ -n "$vmlinuz" ] || { echo "vm-kit: no vmlinuz in $packages" >&2; exit 1; }

# The ELF inside the bzImage: its xz (up to bookworm) or zstd stream, from
# where its magic starts.
unpacked=
for format in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd'; do
    tool=${format%%:*} magic=${format#*:}
    offset=$({ LC_ALL=C grep -obUaP "$magic" "$vmlinuz" || true; } | head -n 1 | cut -d: -f1)
    [ -n "$offset" ] || continue
    tail -c +"$((offset + 1))" "$vmlinuz" | "$tool" -dc >vmlinux 2>/dev/null || true
    if [ "$(head -c 4 vmlinux | od -An -c | tr -d ' ')" = 177ELF ]; then
        unpacked=$tool
        break
    fi
done
[ -n "$unpacked" ] || { echo "vm-kit: no ELF kernel (xz or zstd) in $vmlinuz" >&2; exit 1; }

# The initrd: busybox, the modules with their dependencies, the init.
mkdir -p initrd/bin "initrd/lib/modules/$kver"
cp "$busybox" initrd/bin/busybox
# Uncompressed: newer Debian kernels ship them xz- or zstd-compressed.
find deb -name '*.ko*' | while IFS= read -r module; do
    file=${module##*/}
    case $file in
        *.ko.xz) xz -dc "$module" >"initrd/lib/modules/$kver/${file%.xz}" ;;
        *.ko.zst) zstd -qdc "$module" >"initrd/lib/modules/$kver/${file%.zst}" ;;
        *.ko) cp "$module" "initrd/lib/modules/$kver/" ;;
    esac
done
"$busybox" depmod -b initrd "$kver"
# The modules the kernel has as modules, in loading order (the others are
# built in).
for m in $modules; do
    [ ! -e "initrd/lib/modules/$kver/$m.ko" ] || echo "$m"
done >initrd/modules
install -m 755 "$here/vm-stage-1.sh" initrd/init
(cd initrd && find . | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9 >initrd.gz

# KVM only where a boot shows it works; a broken KVM stops qemu without
# exiting, hence the timeout.
accel=tcg
# (The subshell ends with a status, never with qemu's abort: bash would
# say "Aborted".)
if [ -w /dev/kvm ] &&
    (timeout 20 qemu-system-x86_64 -M pc -accel kvm -cpu max -m 256 -nodefaults -no-user-config -display none \
        -no-reboot -serial file:kvm-probe.log -bios /usr/share/qemu/qboot.rom -kernel vmlinux -initrd initrd.gz \
        -append 'console=ttyS0 panic=-1 vm.probe=1' || exit 1) >/dev/null 2>&1 &&
    grep -q 'nixpipe-vm: probe ok' kvm-probe.log; then
    accel=kvm
fi
echo "vm-kit: kernel $kver, accelerator $accel" >&2

mkdir -p "$tmp/out"
cp "$vmlinuz" bzImage
mv vmlinux bzImage initrd.gz "$tmp/out/"
printf '%s\n' "$kver" >"$tmp/out/kernel-version"
printf '%s\n' "$accel" >"$tmp/out/accel"
printf '%s\n' "$version" >"$tmp/out/version"
rm -rf "$out.old"
[ ! -e "$out" ] || mv "$out" "$out.old"
mv "$tmp/out" "$out"
rm -rf "$out.old"
