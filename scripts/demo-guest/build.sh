#!/usr/bin/env bash
# Build a tiny bootable demo guest (kernel + busybox initramfs) for QEMU from
# Debian packages only.
#
#   scripts/demo-guest/build.sh OUTDIR
#
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.img and OUTDIR/VERSION. Boot it with
#   -kernel OUTDIR/vmlinuz -initrd OUTDIR/initrd.img -append 'console=tty0 console=ttyS0'
#
# Needs (Debian packages, installing them is the caller's job):
#   linux-image-cloud-amd64 busybox-static cpio gzip coreutils
#   (+ xz-utils / zstd only if the kernel's modules are compressed)
#
# Environment overrides:
#   DEMO_KVER     kernel version to use (default: newest /boot/vmlinuz-*-cloud-amd64)
#   DEMO_BUSYBOX  static busybox binary (default: /bin/busybox from busybox-static)
#
# Idempotent: if VERSION records the same input hash and the outputs are intact,
# nothing is rebuilt. Outputs are written to temp files and renamed into place;
# VERSION is removed first and written last, so a VERSION file only ever exists
# next to a complete, matching vmlinuz + initrd.img.
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
need_pkg() { echo "build.sh: missing dependency: $1 (install Debian package '$2', e.g. apt-get install -y --no-install-recommends $2)" >&2; exit 1; }

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUTDIR=$1
SELF=$(readlink -f "${BASH_SOURCE[0]}")

export LC_ALL=C

# ---------------------------------------------------------------- dependencies
for tool in cpio:cpio gzip:gzip sha256sum:coreutils find:findutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkg "${tool%%:*}" "${tool#*:}"
done

if [[ -n "${DEMO_KVER:-}" ]]; then
    KVER=$DEMO_KVER
else
    KVER=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' -printf '%f\n' 2>/dev/null \
           | sed 's/^vmlinuz-//' | sort -V | tail -n1)
fi
[[ -n "$KVER" && -r "/boot/vmlinuz-$KVER" ]] || need_pkg "/boot/vmlinuz-${KVER:-*-cloud-amd64}" linux-image-cloud-amd64
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[[ -r "$MODDIR/modules.dep" ]] || need_pkg "$MODDIR/modules.dep" "linux-image-$KVER"

BUSYBOX=${DEMO_BUSYBOX:-/bin/busybox}
[[ -x "$BUSYBOX" ]] || need_pkg "$BUSYBOX" busybox-static
# A dynamically linked busybox (package 'busybox') would not run in the initramfs.
# Detect an ELF PT_INTERP program header (= dynamically linked), 64-bit little endian.
elf_has_interp() {
    local f=$1 phoff phentsize phnum i type
    [[ "$(od -An -c -N4 "$f" | tr -d ' ')" == '177ELF' ]] || return 0   # not ELF: treat as unusable
    phoff=$(od -An -t u8 -j 32 -N 8 "$f" | tr -d ' ')
    phentsize=$(od -An -t u2 -j 54 -N 2 "$f" | tr -d ' ')
    phnum=$(od -An -t u2 -j 56 -N 2 "$f" | tr -d ' ')
    for (( i=0; i<phnum; i++ )); do
        type=$(od -An -t u4 -j $(( phoff + i * phentsize )) -N 4 "$f" | tr -d ' ')
        [[ "$type" != 3 ]] || return 0
    done
    return 1
}
if elf_has_interp "$BUSYBOX"; then
    need_pkg "static $BUSYBOX (found a dynamically linked or non-ELF busybox)" busybox-static
fi
BB_VER=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)
[[ -n "$BB_VER" ]] || BB_VER=$("$BUSYBOX" 2>/dev/null | head -n1 | sed -n 's/^BusyBox v\([^ ]*\).*/\1/p')
[[ -n "$BB_VER" ]] || BB_VER=unknown

# ------------------------------------------------------------- kernel modules
# Wanted modules in load order; dependencies from modules.dep are added first.
WANTED_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk button evdev)

declare -A MOD_PATH=() MOD_DEPS=() SEEN=()
while IFS= read -r line; do
    path=${line%%:*}
    name=${path##*/}; name=${name%%.ko*}; name=${name//-/_}
    MOD_PATH[$name]=$path
    MOD_DEPS[$name]=${line#*:}
done < "$MODDIR/modules.dep"

is_builtin() {
    [[ -r "$MODDIR/modules.builtin" ]] || return 1
    sed 's#.*/##; s/\.ko.*$//; s/-/_/g' "$MODDIR/modules.builtin" | grep -qx "$1"
}

LOAD_ORDER=()
add_module() {
    local m=$1 dn deps i
    [[ -z "${SEEN[$m]:-}" ]] || return 0
    SEEN[$m]=1
    if [[ -z "${MOD_PATH[$m]:-}" ]]; then
        is_builtin "$m" && return 0
        die "kernel module '$m' not found for $KVER (neither in $MODDIR/modules.dep nor built in)"
    fi
    # modules.dep lists dependencies so that loading them in reverse order works
    read -r -a deps <<<"${MOD_DEPS[$m]}"
    for (( i=${#deps[@]}-1; i>=0; i-- )); do
        dn=${deps[i]##*/}; dn=${dn%%.ko*}; dn=${dn//-/_}
        add_module "$dn"
    done
    LOAD_ORDER+=("$m")
}
for m in "${WANTED_MODULES[@]}"; do add_module "$m"; done

NEED_XZ=0 NEED_ZSTD=0
for m in "${LOAD_ORDER[@]}"; do
    case ${MOD_PATH[$m]} in
        *.ko.xz)  NEED_XZ=1 ;;
        *.ko.zst) NEED_ZSTD=1 ;;
        *.ko.gz)  ;;
        *.ko)     ;;
        *) die "unexpected module file name ${MOD_PATH[$m]}" ;;
    esac
done
(( NEED_XZ == 0 ))   || command -v xz   >/dev/null 2>&1 || need_pkg xz xz-utils
(( NEED_ZSTD == 0 )) || command -v zstd >/dev/null 2>&1 || need_pkg zstd zstd

# ------------------------------------------------------------- up-to-date check
INPUT_HASH=$(
    {
        echo "kver=$KVER busybox=$BB_VER modules=${LOAD_ORDER[*]}"
        sha256sum "$SELF" "$KERNEL" "$BUSYBOX"
        for m in "${LOAD_ORDER[@]}"; do sha256sum "$MODDIR/${MOD_PATH[$m]}"; done
    } | sed 's#  /.*/#  #' | sha256sum | cut -c1-64
)

content_hash() { cat "$1/vmlinuz" "$1/initrd.img" | sha256sum | cut -c1-16; }

if [[ -f "$OUTDIR/VERSION" && -f "$OUTDIR/vmlinuz" && -f "$OUTDIR/initrd.img" ]]; then
    old=$(head -n1 "$OUTDIR/VERSION")
    if [[ "$old" == *" inputs=$INPUT_HASH"* && "$old" == *" sha256=$(content_hash "$OUTDIR") "* ]]; then
        echo "build.sh: up to date: $OUTDIR ($old)"
        exit 0
    fi
fi

# ------------------------------------------------------------------ build
mkdir -p "$OUTDIR"
# (no lock needed: temp names are per-process, renames are atomic and the build is reproducible)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/demo-guest.XXXXXX")
TMP_K="$OUTDIR/.vmlinuz.tmp.$$" TMP_I="$OUTDIR/.initrd.img.tmp.$$" TMP_V="$OUTDIR/.VERSION.tmp.$$"
cleanup() { rm -rf "$WORK"; rm -f "$TMP_K" "$TMP_I" "$TMP_V"; }
trap cleanup EXIT

R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/acpi/PWRF,proc,sys,dev,tmp,run,root,var/log,var/run,lib/modules}
chmod 1777 "$R/tmp"

# busybox + applet links
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while IFS= read -r applet; do
    [[ -e "$R/$applet" || -L "$R/$applet" ]] || ln -s /bin/busybox "$R/$applet"
done
ln -sf /bin/busybox "$R/init"     # kernel runs /init from the initramfs -> busybox init (PID 1)

# modules, decompressed (busybox insmod may not understand compressed modules)
: > "$R/lib/modules/load-order"
for m in "${LOAD_ORDER[@]}"; do
    src=$MODDIR/${MOD_PATH[$m]} dst=$R/lib/modules/$m.ko
    case $src in
        *.ko.xz)  xz -dc "$src" > "$dst" ;;
        *.ko.zst) zstd -qdc "$src" > "$dst" ;;
        *.ko.gz)  gzip -dc "$src" > "$dst" ;;
        *)        cp "$src" "$dst" ;;
    esac
    echo "$m" >> "$R/lib/modules/load-order"
done

cat > "$R/etc/banner" <<EOF
=====================================================================
  Appliance demo guest
  kernel $KVER, busybox $BB_VER
  root shell on ttyS0 and tty1, 'COUNTER <n>' on ttyS0 every second
  disk helpers: diskw TEXT BLOCK / diskr BLOCK  (raw 512-byte blocks of /dev/vda)
=====================================================================
EOF

cat > "$R/etc/inittab" <<'EOF'
# busybox init (PID 1). Entries with a tty name get that tty as stdin/out/err
# and as controlling terminal (init does setsid()+open), so the shells have job control.
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
tty1::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
EOF

cat > "$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# init runs us as a session leader without a controlling tty. A session leader that
# opens /dev/ttyS0 or /dev/tty1 would grab it as controlling tty and the shells
# started afterwards would lose job control, so do the real work in a child.
if [ -z "$DEMO_RCS_CHILD" ]; then
    DEMO_RCS_CHILD=1 /bin/sh /etc/init.d/rcS
    exit $?
fi
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null || true
hostname demo

# print to VGA console and serial port
say() {
    for t in /dev/tty1 /dev/ttyS0; do
        [ -c "$t" ] && echo "$*" > "$t" 2>/dev/null
    done
    return 0
}

for t in /dev/tty1 /dev/ttyS0; do
    [ -c "$t" ] && { echo; cat /etc/banner; } > "$t" 2>/dev/null
done
say "demo: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"

for m in $(cat /lib/modules/load-order); do
    if ! err=$(insmod "/lib/modules/$m.ko" 2>&1); then
        say "demo: WARNING: failed to load module $m: $err"
    fi
done

case " $(cat /proc/cmdline) " in
*" demo.noacpi "*)
    say "demo: demo.noacpi given - NOT starting acpid, ACPI power button is ignored"
    ;;
*)
    # wait (max ~3 s) for the power button's evdev node; acpid scans /dev/input at start
    i=0
    while [ $i -lt 30 ]; do
        found=
        for n in /sys/class/input/event*/device/name; do
            [ -r "$n" ] || continue
            case "$(cat "$n")" in *"Power Button"*)
                e=${n#/sys/class/input/}; e=${e%%/*}
                [ -c "/dev/input/$e" ] && found=1 ;;
            esac
        done
        [ -n "$found" ] && break
        i=$((i + 1)); usleep 100000
    done
    [ -n "$found" ] || say "demo: WARNING: no ACPI power button input device found"
    if acpid -c /etc/acpi -l /var/log/acpid.log; then
        say "demo: acpid started (ACPI power button -> poweroff)"
    else
        say "demo: WARNING: acpid failed to start"
    fi
    ;;
esac

if [ -b /dev/vda ]; then
    say "demo: disk /dev/vda present ($(cat /sys/block/vda/size) sectors)"
else
    say "demo: no virtio disk (/dev/vda) attached"
fi

/bin/demo-counter </dev/null >/dev/null 2>&1 &
say "demo: boot complete"
# keep routine kernel messages (level >= warning) off the consoles from now on
dmesg -n 4 2>/dev/null || true
exit 0
EOF

cat > "$R/etc/init.d/rcK" <<'EOF'
#!/bin/sh
for t in /dev/tty1 /dev/ttyS0; do
    [ -c "$t" ] && echo "demo: shutting down" > "$t" 2>/dev/null
done
sync
exit 0
EOF

cat > "$R/bin/demo-counter" <<'EOF'
#!/bin/sh
# 'COUNTER <n>' on the serial port once a second, forever. State is in RAM only.
trap '' HUP INT QUIT
n=0
while :; do
    echo "COUNTER $n" > /dev/ttyS0 2>/dev/null
    n=$((n + 1))
    sleep 1
done
EOF

cat > "$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# busybox acpid runs /etc/acpi/PWRF/00000080 when the ACPI power button is pressed
for t in /dev/tty1 /dev/ttyS0; do
    [ -c "$t" ] && echo "demo: ACPI power button pressed, powering off" > "$t" 2>/dev/null
done
exec /sbin/poweroff
EOF

cat > "$R/bin/diskw" <<'EOF'
#!/bin/sh
# diskw TEXT BLOCK - write TEXT (NUL-padded to 512 bytes) to 512-byte block BLOCK of /dev/vda
dev=${DEMO_DISK:-/dev/vda}
if [ $# -ne 2 ]; then echo "usage: diskw TEXT BLOCK" >&2; exit 2; fi
case "$2" in ''|*[!0-9]*) echo "DISKW ERROR bad block '$2'"; exit 2 ;; esac
if [ ! -b "$dev" ]; then echo "DISKW ERROR no $dev"; exit 1; fi
if [ ${#1} -gt 511 ]; then echo "DISKW ERROR text longer than 511 bytes"; exit 2; fi
if printf '%s' "$1" | dd of="$dev" bs=512 seek="$2" count=1 conv=sync,fsync,notrunc 2>/dev/null; then
    echo "DISKW OK $2"
else
    echo "DISKW ERROR write failed"; exit 1
fi
EOF

cat > "$R/bin/diskr" <<'EOF'
#!/bin/sh
# diskr BLOCK - read 512-byte block BLOCK of /dev/vda, print 'DISK <block> <text>' (NULs stripped)
dev=${DEMO_DISK:-/dev/vda}
if [ $# -ne 1 ]; then echo "usage: diskr BLOCK" >&2; exit 2; fi
case "$1" in ''|*[!0-9]*) echo "DISK ERROR bad block '$1'"; exit 2 ;; esac
if [ ! -b "$dev" ]; then echo "DISK ERROR no $dev"; exit 1; fi
t=$(dd if="$dev" bs=512 skip="$1" count=1 2>/dev/null | tr -d '\000' | tr '\n' ' ') || { echo "DISK ERROR read failed"; exit 1; }
echo "DISK $1 $t"
EOF

cat > "$R/etc/profile" <<'EOF'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
export PS1='demo# '
cd /root
EOF
echo demo > "$R/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
chmod 0755 "$R/etc/init.d/rcS" "$R/etc/init.d/rcK" "$R/bin/demo-counter" "$R/bin/diskw" "$R/bin/diskr" "$R/etc/acpi/PWRF/00000080"

# reproducible archive: fixed order, owner and mtimes
find "$R" -exec touch -h -d @0 {} +
( cd "$R" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible ) \
    | gzip -9 -n > "$TMP_I"
cp "$KERNEL" "$TMP_K"
chmod 0644 "$TMP_K" "$TMP_I"

# install: VERSION goes away first and comes back last
rm -f "$OUTDIR/VERSION"
mv -f "$TMP_K" "$OUTDIR/vmlinuz"
mv -f "$TMP_I" "$OUTDIR/initrd.img"
echo "kernel=$KVER busybox=$BB_VER sha256=$(content_hash "$OUTDIR") inputs=$INPUT_HASH" > "$TMP_V"
mv -f "$TMP_V" "$OUTDIR/VERSION"
echo "build.sh: built $OUTDIR: $(cat "$OUTDIR/VERSION") (initrd $(stat -c %s "$OUTDIR/initrd.img") bytes)"
