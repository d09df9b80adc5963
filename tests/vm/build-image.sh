#!/usr/bin/env bash
# Builds the VM suite's guest: Debian 12 (minbase + systemd, sudo, socat,
# curl, minisign, qemu-guest-agent and the distribution kernel) as a raw ext4 disk
# plus the kernel and a small initramfs for direct kernel boot.
#
# Usage: build-image.sh MIRROR CACHE_DIR
# Prints the image directory (vmlinuz, initrd.img, rootfs.img) as its last
# line. The image is cached in CACHE_DIR/image-<hash of this script>: any
# change to the recipe below builds a new one; the build path always works
# (debootstrap from MIRROR, debs cached in CACHE_DIR/debs).
#
# The guest has no IP networking (QEMU -nic none). What reaches the host goes
# over vsock: noderax-vm-bridge.service forwards the guest's
# 127.0.0.1:BRIDGE_PORT to the host (CID 2) port BRIDGE_PORT, where the
# harness forwards it to the control-plane testbed.
set -euo pipefail

mirror=$1
cache_dir=$2
readonly SUITE=bookworm
readonly BRIDGE_PORT=18080
# minisign: the installer verifies a signed release with it (--release-key)
# and would otherwise install it from the network the guest does not have.
readonly PACKAGES=systemd-sysv,udev,dbus,sudo,socat,ca-certificates,iproute2,curl,minisign,python3-minimal,qemu-guest-agent,linux-image-amd64
# Modules the initramfs needs to mount the root disk.
readonly INITRD_MODULES="virtio_pci virtio_blk ext4 crc32c_generic"
# Module trees no VM of this suite uses (the image shrinks by ~250 MiB).
readonly DROP_MODULES="sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet
drivers/infiniband drivers/staging drivers/usb drivers/bluetooth drivers/iio drivers/scsi
drivers/isdn drivers/hwmon drivers/mtd drivers/input/touchscreen drivers/nfc net/bluetooth
net/wireless net/mac80211 fs/ocfs2 fs/btrfs fs/xfs fs/nfs fs/smb fs/ceph"

log() { printf 'vm image: %s\n' "$*" >&2; }
die() { printf 'vm image: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing (tests/vm/setup-host.sh installs it)"

key=$(sha256sum "$0" | cut -c1-16)
image=$cache_dir/image-$key
if [[ -f $image/rootfs.img && -f $image/vmlinuz && -f $image/initrd.img ]]; then
    log "cached image $image"
    printf '%s\n' "$image"
    exit 0
fi

mkdir -p "$cache_dir/debs"
work=$(mktemp -d "$cache_dir/.build-image.XXXXXX")
rootfs=$work/rootfs
mounted=()
cleanup() {
    local m
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start=$SECONDS
log "debootstrap $SUITE from $mirror (about 90 s)"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$cache_dir/debs" \
    "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

for m in proc sys dev; do
    if mount --bind "/$m" "$rootfs/$m" 2>/dev/null; then mounted=("$rootfs/$m" "${mounted[@]}"); fi
done
in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

log "configuring the guest"
printf 'noderax-vm\n' >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tnoderax-vm\n' >"$rootfs/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$rootfs/etc/fstab"
# A fixed machine id: no first-boot logic on every -snapshot boot.
printf '%s\n' "$key$key" >"$rootfs/etc/machine-id"
# No network, so no remote apt sources (scenarios add a local repository).
rm -f "$rootfs/etc/apt/sources.list"
printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/90noderax-vm"
in_root passwd -l root >/dev/null
# Timers that would compete for the emulated CPU during a scenario.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer >/dev/null 2>&1

cat >"$rootfs/etc/systemd/system/noderax-vm-bridge.service" <<UNIT
# The VM suite's only way out: 127.0.0.1:$BRIDGE_PORT in the guest reaches
# the host's vsock port $BRIDGE_PORT (CID 2), which the harness forwards to
# the control-plane testbed on the host's loopback.
[Unit]
Description=Noderax VM suite: loopback-to-vsock bridge to the host
Before=network-online.target

[Service]
ExecStart=/usr/bin/socat TCP-LISTEN:$BRIDGE_PORT,bind=127.0.0.1,fork,reuseaddr VSOCK-CONNECT:2:$BRIDGE_PORT
Restart=always
RestartSec=1s

[Install]
WantedBy=multi-user.target network-online.target
UNIT
in_root systemctl enable noderax-vm-bridge.service >/dev/null 2>&1

kver=$(basename "$(find "$rootfs/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
[[ -n $kver ]] || die "no kernel modules in the image"
for d in $DROP_MODULES; do rm -rf "${rootfs:?}/lib/modules/$kver/kernel/$d"; done
in_root depmod -a "$kver"
sed -i 's/^MODULES=.*/MODULES=list/' "$rootfs/etc/initramfs-tools/initramfs.conf"
# shellcheck disable=SC2086 # one module per line
printf '%s\n' $INITRD_MODULES >"$rootfs/etc/initramfs-tools/modules"
in_root update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 ||
    { cat "$work/initramfs.log" >&2; die "update-initramfs failed"; }

in_root apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/cache/debconf/*-old
for m in "${mounted[@]}"; do umount -l "$m"; done
mounted=()

mkdir -p "$work/out"
cp "$rootfs/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$work/out/initrd.img"
mkfs.ext4 -q -L noderax-vm -d "$rootfs" "$work/out/rootfs.img" 2G
rm -rf "$image"
mv "$work/out" "$image"
log "built $image in $((SECONDS - start)) s ($(du -sh --apparent-size "$image/rootfs.img" | cut -f1) disk, $(du -sh "$image/rootfs.img" | cut -f1) used)"
# Older images of other recipes are of no use any more.
find "$cache_dir" -maxdepth 1 -name 'image-*' ! -name "image-$key" -exec rm -rf {} +
printf '%s\n' "$image"
