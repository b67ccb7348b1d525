#!/usr/bin/python3
"""Serial-console and QMP helper for scripts/demo-guest/smoke.sh (stdlib only).

  smoke_helper.py serial SOCK LAUNCH_EPOCH LOGFILE [--disk TOKEN]
      Connect to the guest serial socket, wait for the 'demo# ' prompt and two
      consecutive COUNTER lines, check job control, optionally write TOKEN to
      block 1 with diskw and read it back with diskr. Prints 'PROMPT_SECONDS <s>'.
  smoke_helper.py qmp SOCK COMMAND [JSON_ARGUMENTS]
      qmp_capabilities + COMMAND, prints the reply; exit 1 on an error reply.

All waits poll against a deadline; nothing relies on fixed sleeps.
"""
import json
import os
import re
import socket
import sys
import time

PROMPT = "demo# "


def connect_unix(path, deadline):
    last = None
    while time.time() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:  # socket not created yet / not listening yet
            last = e
            s.close()
            time.sleep(0.05)
    raise SystemExit(f"FAIL: cannot connect to {path}: {last}")


class Serial:
    def __init__(self, path, logfile, deadline):
        self.sock = connect_unix(path, deadline)
        self.sock.settimeout(0.2)
        self.buf = ""
        self.log = open(logfile, "a", encoding="utf-8", errors="replace")

    def pump(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            raise SystemExit("FAIL: serial socket closed by QEMU")
        text = data.decode("utf-8", errors="replace")
        self.log.write(text)
        self.log.flush()
        self.buf += text.replace("\r", "")

    def wait(self, pattern, timeout, start=0, what=None):
        """Wait until regex matches self.buf[start:] (patterns should end in \\n so
        that only complete lines match); returns the match."""
        deadline = time.time() + timeout
        rx = re.compile(pattern, re.M)
        while True:
            m = rx.search(self.buf, start)
            if m:
                return m
            if time.time() > deadline:
                tail = self.buf[-600:]
                raise SystemExit(f"FAIL: timeout waiting for {what or pattern!r}; serial tail:\n{tail}")
            self.pump()

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def run(self, cmd, pattern, timeout=20, what=None):
        start = len(self.buf)
        self.send(cmd)
        return self.wait(pattern, timeout, start, what or cmd)


def cmd_serial(argv):
    sock, launch, logfile = argv[0], float(argv[1]), argv[2]
    token = None
    if len(argv) > 3:
        if argv[3] != "--disk" or len(argv) != 5:
            raise SystemExit("usage: serial SOCK LAUNCH_EPOCH LOGFILE [--disk TOKEN]")
        token = argv[4]

    ser = Serial(sock, logfile, time.time() + 10)
    pm = ser.wait(re.escape(PROMPT), 90, what="shell prompt")
    prompt_s = time.time() - launch
    print(f"PROMPT_SECONDS {prompt_s:.2f}", flush=True)

    # two consecutive counter lines
    m1 = ser.wait(r"COUNTER (\d+)\n", 15, start=pm.end(), what="COUNTER line")
    m2 = ser.wait(r"COUNTER (\d+)\n", 15, start=m1.end(), what="second COUNTER line")
    a, b = int(m1.group(1)), int(m2.group(1))
    if b != a + 1:
        raise SystemExit(f"FAIL: COUNTER not consecutive: {a} then {b}")
    print(f"COUNTER ok ({a} -> {b})", flush=True)

    # the serial shell must have job control (controlling tty)
    m = ser.run('case $- in *m*) echo JC-"ON";; *) echo JC-"OFF";; esac',
                r"^JC-(ON|OFF)\n", what="job control check")
    if m.group(1) != "ON":
        raise SystemExit("FAIL: serial shell has no job control")
    print("JOBCONTROL ok", flush=True)

    if token:
        m = ser.run(f"diskw {token} 1", r"^DISKW [^\n]*\n", what="diskw")
        if m.group(0).strip() != "DISKW OK 1":
            raise SystemExit(f"FAIL: diskw said {m.group(0).strip()!r}")
        m = ser.run("diskr 1", r"^DISK [^\n]*\n", what="diskr")
        got = m.group(0).strip()
        if got != f"DISK 1 {token}":
            raise SystemExit(f"FAIL: diskr said {got!r}, expected 'DISK 1 {token}'")
        print(f"DISK ok ({got})", flush=True)


def cmd_qmp(argv):
    path, command = argv[0], argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else None
    s = connect_unix(path, time.time() + 10)
    s.settimeout(10)
    f = s.makefile("rwb")

    def recv_reply():
        while True:
            line = f.readline()
            if not line:
                raise SystemExit("FAIL: QMP connection closed")
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg
            # asynchronous events are skipped

    greeting = json.loads(f.readline())
    assert "QMP" in greeting, greeting
    f.write(b'{"execute":"qmp_capabilities"}\n')
    f.flush()
    recv_reply()
    req = {"execute": command}
    if args is not None:
        req["arguments"] = args
    f.write(json.dumps(req).encode() + b"\n")
    f.flush()
    try:
        reply = recv_reply()
    except SystemExit:
        if command == "quit":  # QEMU may close before answering
            print("{}")
            return
        raise
    print(json.dumps(reply))
    if "error" in reply:
        sys.exit(1)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("serial", "qmp"):
        raise SystemExit(__doc__)
    {"serial": cmd_serial, "qmp": cmd_qmp}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
