"""What /proc says of a process (its memory, descriptors, mapped
generation files, CPU time) and of the machine, and the page cache
dropped through it."""

import os
import platform
import re
from pathlib import Path


def status(pid):
    """The sizes in /proc/PID/status (its "... kB" lines), in bytes:
    {"VmRSS": ..., "RssAnon": ..., "RssFile": ..., ...}."""
    sizes = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        m = re.match(r"(\w+):\s+(\d+) kB$", line)
        if m:
            sizes[m.group(1)] = int(m.group(2)) * 1024
    return sizes


def with_children(pid):
    """`pid` and its children (nginx's workers, say)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_anon_with_children(pid):
    """Anonymous resident bytes of `pid` and its children, summed."""
    return sum(status(p).get("RssAnon", 0) for p in with_children(pid))


def fd_count(pid):
    """How many descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid):
    """How many of its open descriptors are sockets."""
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
               for fd in os.listdir(f"/proc/{pid}/fd"))


def mapped_generations(pid):
    """The generation files a process maps, one per file (device and inode), by name;
    a file deleted since (retention) is still mapped and named "... (deleted)"."""
    files = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and re.search(r"/gen-\d+\.promo( \(deleted\))?$", parts[5]):
            files[(parts[3], parts[4])] = parts[5].rsplit("/", 1)[-1]
    return sorted(files.values())


def sample(pid):
    """A server's memory (RSS, anonymous, file-backed; bytes), open
    descriptors and mapped generation files, now."""
    sizes = status(pid)
    names = mapped_generations(pid)
    return {"rss": sizes["VmRSS"], "anon": sizes["RssAnon"], "file": sizes["RssFile"],
            "fds": fd_count(pid), "mapped": len(names), "mapped_names": names}


def cpu_seconds(pid):
    """CPU seconds (user and system) a running process has used, all its
    threads, ended ones included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """CPU seconds (user and system) of the children waited for so far."""
    t = os.times()
    return t.children_user + t.children_system


def machine():
    """The machine, as the reports name it: cores, memory, CPU model, kernel."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
            "kernel": platform.release()}


def drop_caches(what):
    """Writes dirty pages out, then drops the page cache (`what` 1), or it
    and the dentries and inodes (3). Needs root."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text(f"{what}\n")
