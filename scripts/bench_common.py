"""What every part of `make bench` (and `make fleet`) shares: its log line,
a free port, and stopping the processes it started."""

import socket
import subprocess
import time


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_all(procs, timeout=60):
    """SIGTERM to each process still running, newest first, then a wait for
    each; SIGKILL to any that has not exited within `timeout` seconds."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
