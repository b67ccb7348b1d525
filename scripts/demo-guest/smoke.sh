#!/usr/bin/env bash
# Smoke test for the demo guest built by build.sh.
#
#   scripts/demo-guest/smoke.sh OUTDIR
#
# Boot 1: boots OUTDIR/vmlinuz + initrd.img under QEMU/TCG with a qcow2 virtio disk,
#         waits for the 'demo# ' prompt and COUNTER lines on the serial socket,
#         checks job control, writes/reads block 1 with diskw/diskr, takes a PNG
#         screendump, then QMP system_powerdown must make QEMU exit within 15 s;
#         finally the written block is checked on the host side in the qcow2.
# Boot 2: same with 'demo.noacpi': QEMU must still run 5 s after system_powerdown,
#         then QMP quit.
#
# Env: SMOKE_SCREENDUMP=FILE.png  keep the boot-1 screendump there
#      SMOKE_KEEP=1               keep the work dir (logs, sockets, disk) even on success
# Needs: qemu-system-x86 qemu-utils (qemu-system-x86_64, qemu-img), python3.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUTDIR=$(readlink -f "$1")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPER=$HERE/smoke_helper.py

PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3 || true)
[[ -n $PY ]] || { echo "FAIL: python3 not found (Debian package python3)"; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "FAIL: qemu-system-x86_64 not found (Debian package qemu-system-x86)"; exit 1; }
command -v qemu-img >/dev/null || { echo "FAIL: qemu-img not found (Debian package qemu-utils)"; exit 1; }
for f in vmlinuz initrd.img; do
    [[ -f $OUTDIR/$f ]] || { echo "FAIL: $OUTDIR/$f missing - run scripts/demo-guest/build.sh $1 first"; exit 1; }
done

# short path: unix socket paths are limited to 108 bytes
DIR=$(mktemp -d /tmp/demo-smoke.XXXXXX)
QPID=
RESULT=FAIL

finish() {
    local rc=$?
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    if [[ $RESULT == PASS && -z ${SMOKE_KEEP:-} ]]; then
        rm -rf "$DIR"
    else
        echo "logs kept in $DIR"
    fi
    [[ $RESULT == PASS ]] || { echo "FAIL (exit $rc)"; exit 1; }
}
trap finish EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# running = exists and is not a zombie (an exited child stays a zombie until waited for)
qemu_running() {
    local st
    st=$(awk '{ print $3 }' "/proc/$QPID/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# wait_exit SECONDS: 0 if QEMU exited within SECONDS (polling)
wait_exit() {
    local deadline
    deadline=$(awk -v t="$(now)" -v d="$1" 'BEGIN { printf "%.3f", t + d }')
    while qemu_running; do
        awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }' && return 1
        sleep 0.1
    done
    wait "$QPID" 2>/dev/null || true
    QPID=
}

launch() { # launch NAME APPEND
    rm -f "$DIR/serial.sock" "$DIR/qmp.sock" "$DIR/vnc.sock"
    LAUNCH=$(now)
    qemu-system-x86_64 -nodefaults -no-user-config -accel tcg -machine q35 -m 256 -smp 1 -vga std \
        -kernel "$OUTDIR/vmlinuz" -initrd "$OUTDIR/initrd.img" -append "$2" \
        -chardev socket,id=ser0,path="$DIR/serial.sock",server=on,wait=off -serial chardev:ser0 \
        -qmp unix:"$DIR/qmp.sock",server=on,wait=off -vnc unix:"$DIR/vnc.sock" \
        -drive if=none,id=d0,file="$DIR/disk.qcow2",format=qcow2 -device virtio-blk-pci,drive=d0 \
        -nic none -display none \
        >"$DIR/$1.qemu.log" 2>&1 &
    QPID=$!
    echo "[$1] launched QEMU pid $QPID, append '$2'"
}

qmp() { "$PY" "$HELPER" qmp "$DIR/qmp.sock" "$@"; }

qemu-img create -q -f qcow2 "$DIR/disk.qcow2" 16M
TOKEN="hello-$$-$RANDOM"

# ------------------------------------------------------------------ boot 1
launch boot1 'console=tty0 console=ttyS0'
out=$("$PY" "$HELPER" serial "$DIR/serial.sock" "$LAUNCH" "$DIR/boot1.serial.log" --disk "$TOKEN") \
    || { echo "$out"; fail "boot 1 serial checks"; }
echo "$out" | sed 's/^/[boot1] /'
PROMPT1=$(echo "$out" | awk '/^PROMPT_SECONDS/ { print $2 }')

qmp screendump "{\"filename\":\"$DIR/screen.png\",\"format\":\"png\"}" >/dev/null || fail "screendump"
[[ "$(head -c 4 "$DIR/screen.png" | od -An -c | tr -d ' ')" == '211PNG' ]] || fail "screendump is not a PNG"
echo "[boot1] screendump ok ($(stat -c %s "$DIR/screen.png") bytes)"
[[ -z ${SMOKE_SCREENDUMP:-} ]] || cp "$DIR/screen.png" "$SMOKE_SCREENDUMP"

T0=$(now)
qmp system_powerdown >/dev/null || fail "QMP system_powerdown"
wait_exit 15 || fail "QEMU still running 15 s after system_powerdown (ACPI shutdown broken)"
SHUT1=$(elapsed "$T0")
echo "[boot1] QEMU exited $SHUT1 s after system_powerdown"

qemu-img convert -O raw "$DIR/disk.qcow2" "$DIR/disk.raw"
ondisk=$(dd if="$DIR/disk.raw" bs=512 skip=1 count=1 2>/dev/null | tr -d '\000')
[[ $ondisk == "$TOKEN" ]] || fail "block 1 in the qcow2 is '$ondisk', expected '$TOKEN'"
echo "[boot1] host side: block 1 of disk.qcow2 = '$ondisk'"

# ------------------------------------------------------------------ boot 2
launch boot2 'console=tty0 console=ttyS0 demo.noacpi'
out=$("$PY" "$HELPER" serial "$DIR/serial.sock" "$LAUNCH" "$DIR/boot2.serial.log") \
    || { echo "$out"; fail "boot 2 serial checks"; }
echo "$out" | sed 's/^/[boot2] /'
PROMPT2=$(echo "$out" | awk '/^PROMPT_SECONDS/ { print $2 }')
grep -q 'demo.noacpi given - NOT starting acpid' "$DIR/boot2.serial.log" || fail "guest did not report demo.noacpi"

qmp system_powerdown >/dev/null || fail "QMP system_powerdown (boot 2)"
if wait_exit 5; then
    fail "demo.noacpi guest exited after system_powerdown (should ignore it)"
fi
echo "[boot2] still running 5 s after system_powerdown (as expected)"
qmp quit >/dev/null || true
wait_exit 10 || fail "QEMU did not exit after QMP quit"
echo "[boot2] QMP quit ok"

RESULT=PASS
echo "PASS: launch->prompt boot1 ${PROMPT1}s, boot2 ${PROMPT2}s; ACPI powerdown->exit ${SHUT1}s"
