"""The processes the benches and soaks run beside them: a `promo serve`,
nginx, any other; started on a free port, waited for until they answer,
and stopped, one or all."""

import signal
import socket
import ssl
import subprocess
import time
import urllib.request

from .paths import PROMO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, running=None, popen=subprocess.Popen, **kw):
    """`cmd` started (each part as a string) with Popen's keyword arguments
    `kw`, by `popen` (soak's registers its children), and appended to
    `running` when given (what stop_all stops)."""
    proc = popen([str(c) for c in cmd], **kw)
    if running is not None:
        running.append(proc)
    return proc


def http_get(url, timeout=10):
    """GET `url`: (status, body). HTTPS certificates are the scripts' own
    self-signed ones, so they are not checked."""
    with urllib.request.urlopen(url, timeout=timeout, context=ssl._create_unverified_context()) as r:
        return r.status, r.read()


def wait_ready(url, limit=600, proc=None, what="the server", interval=0.2, timeout=10):
    """Returns once GET `url` answers 200, trying every `interval` seconds;
    RuntimeError after `limit` seconds, or as soon as `proc` (the process
    that should answer, called `what`) has exited."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            if http_get(url, timeout)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{url} never became ready")


def wait_port(port, limit=30):
    """Returns once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc, sig=signal.SIGTERM, timeout=60, kill=False):
    """`sig` to `proc` if it still runs (SIGTERM: promo serve drains its
    requests, then exits; SIGQUIT: nginx's graceful stop), then a wait of
    up to `timeout` seconds, past which, with `kill`, SIGKILL and a wait
    (without, subprocess.TimeoutExpired). Its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if not kill:
            raise
        proc.kill()
        return proc.wait()


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


class Serve:
    """`promo serve --data-dir DATA --listen 127.0.0.1:PORT EXTRA...` on
    `port` (a free one unless given), with its URL; unless `ready` is None,
    waited for until that path answers 200 (for at most `limit` seconds,
    trying every `interval`), and killed if it never does.

    `promo` is the binary; `wrap` turns the command into another that runs
    it (inside a cgroup, say); `popen` and `running` are start's; the other
    keyword arguments are Popen's (stderr is dropped unless given)."""

    def __init__(self, data, *extra, port=None, scheme="http", ready="/readyz", limit=600,
                 interval=0.2, timeout=10, promo=PROMO, wrap=None, running=None,
                 popen=subprocess.Popen, stderr=subprocess.DEVNULL, **kw):
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        cmd = [promo, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{self.port}", *extra]
        self.proc = start(wrap(cmd) if wrap else cmd, running, popen, stderr=stderr, **kw)
        if ready:
            try:
                wait_ready(self.url + ready, limit, self.proc, "promo serve", interval, timeout)
            except BaseException:
                self.proc.kill()
                self.proc.wait()
                raise

    def stop(self, timeout=60, kill=False):
        """SIGTERM, then a wait (see stop): its exit status."""
        return stop(self.proc, timeout=timeout, kill=kill)


def nginx(prefix, conf, running=None):
    """nginx in the foreground with the configuration file `conf`, its
    paths under `prefix`; stop it with stop_nginx."""
    return start(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"], running,
                 stderr=subprocess.DEVNULL)


def stop_nginx(proc, timeout=30):
    """nginx's graceful stop: it finishes the requests it has."""
    return stop(proc, signal.SIGQUIT, timeout)
