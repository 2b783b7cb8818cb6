"""Run a command as a child subreaper (Linux) and report, as the last stdout line (JSON), its exit
code and every process left behind: anything the command started that outlived it is reparented
here, alive or a zombie. Used by tests/test_no_orphans.py."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def left_behind() -> list[dict]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid():
            found.append({"pid": int(pid), "state": state, "cmdline": cmdline[:200]})
    return found


def main() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    left = left_behind()  # at once: a helper still ending "in a moment" counts
    sys.stderr.write(done.stderr)
    print(json.dumps({"returncode": done.returncode, "left": left}))
    for p in left:  # leave nothing behind ourselves
        try:
            os.kill(p["pid"], 9)
            os.waitpid(p["pid"], 0)
        except OSError:
            pass


if __name__ == "__main__":
    main()
