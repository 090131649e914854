#!/bin/bash
# Run a command in a throw-away "container" with a crashcart toolbox image attached.
# Called by tests/image/conftest.py inside `unshare --mount --pid --net --fork`, so every
# mount below dies with the namespace (erofs is mounted straight from the file; squashfs and
# ext4 through an autoclear loop device that goes away on the last unmount).
#
#   sandbox.sh MODE ROOTFS IMAGE FSTYPE CMD...
#     sideload: toolbox at ROOTFS/dev/crashcart, `/` = ROOTFS (docker exec CTR /dev/crashcart/...)
#     session:  toolbox at `/` and at /dev/crashcart, ROOTFS grafted at /target
set -euo pipefail
mode=$1 root=$2 image=$3 fstype=$4
shift 4

mount_image() {  # IMAGE DIR
    if [ "$fstype" = erofs ]; then
        mount -t erofs -o ro "$1" "$2"
    else
        mount -t "$fstype" -o ro,loop "$1" "$2"
    fi
}

dev_tree() {  # DIR: a tmpfs /dev with the usual nodes, so nothing is created in the rootfs
    mount -t tmpfs -o mode=755 tmpfs "$1"
    for n in null zero full random urandom tty; do
        : >"$1/$n"
        mount --bind "/dev/$n" "$1/$n"
    done
    mkdir "$1/pts" "$1/crashcart"
}

ip link set lo up
dev_tree "$root/dev"
mount_image "$image" "$root/dev/crashcart"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/tmp"

container_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
               HOME=/root TERM=dumb HOSTNAME=testbox)
if [ "$mode" = sideload ]; then
    exec "${container_env[@]}" chroot "$root" "$@"
fi

session=$(mktemp -d)
mount_image "$image" "$session"
dev_tree "$session/dev"
mount --bind "$root/dev/crashcart" "$session/dev/crashcart"
mount --rbind "$root" "$session/target"
mount -t proc proc "$session/proc"
mount -t tmpfs tmpfs "$session/tmp"
exec env -i PATH=/usr/bin:/bin TERM=dumb CRASHCART_MODE=session CRASHCART_TARGET=testbox \
    CRASHCART_TARGET_ID=0123456789ab CRASHCART_RUNTIME=test CRASHCART_TARGET_PID=1 \
    CRASHCART_TARGET_ROOT=/target "$(command -v chroot)" "$session" "$@"
