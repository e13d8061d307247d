"""Peak memory and lifetime of the Python processes below one process, sampled from /proc while it runs.

Every ``interval`` seconds the sampler walks the ppid chains of /proc/*/stat to find the descendants of the root
process, and for each Python process reads VmHWM (the resident high-water mark) from /proc/PID/status, so a sample
taken late still sees the peak. Processes whose command line names ``ansible-playbook`` are the controller (its
forked workers included); every other Python process is a module (AnsiballZ payload run by the interpreter). A
process is classified again at every sample, so one first seen as ``sh`` (or as a fork of a worker) that then execs
Python is counted as a module from then on.

Module lifetime: each module process is timed from its start, read from /proc/PID/stat (field 22, clock ticks since
boot, against CLOCK_BOOTTIME) when that agrees with what the sampler saw, else from the sample that first saw it, to
the last sample that saw it plus one interval. ``module_seconds`` is the sum over module processes (a module's own
Python children are inside their parent's lifetime and not added again); it is a bound within about one sampling
interval (and one clock tick) per module process.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

CONTROLLER, MODULE = "controller", "module"
try:
    _TICK = 1.0 / os.sysconf("SC_CLK_TCK")
except (ValueError, OSError):
    _TICK = None


def _stat(pid):
    """(ppid, state, start time in clock ticks since boot) of a process, or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid, encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])  # fields 4, 3 and 22 of proc(5); the comm is cut off


def _children_map():
    """{ppid: [(pid, start ticks), ...]} of the live processes."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(entry.name)
            if found and found[1] != "Z":
                children.setdefault(found[0], []).append((int(entry.name), found[2]))
    return children


def _walk(root):
    """(pid, start ticks, parent pid) of the live processes below ``root``, root included, parents first."""
    own = _stat(root)
    children, found, todo = _children_map(), [], [(root, own[2] if own else None, None)]
    while todo:
        pid, start, parent = todo.pop()
        found.append((pid, start, parent))
        todo.extend((child, child_start, pid) for child, child_start in children.get(pid, ()))
    return found


def descendants(root):
    """The live processes below ``root``, root included."""
    return [pid for pid, _start, _parent in _walk(root)]


def _python_kind(pid):
    """CONTROLLER, MODULE, or None for a process that is not Python, is gone, or is in the middle of an exec (its
    new executable already shows, its command line not yet: it is classified at the next sample)."""
    try:
        exe = os.path.basename(os.readlink("/proc/%d/exe" % pid))
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return None
    if not exe.startswith("python") or not cmdline:
        return None
    return CONTROLLER if b"ansible-playbook" in cmdline else MODULE


def vm_hwm_kib(pid):
    try:
        with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _boot_offset():
    """CLOCK_BOOTTIME minus time.monotonic(), or None where there is no CLOCK_BOOTTIME."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None or _TICK is None:
        return None
    try:
        return time.clock_gettime(clock) - time.monotonic()
    except OSError:
        return None


@dataclass
class ModuleProcess:
    """One module process as the samples saw it; times are time.monotonic()."""

    pid: int
    first_seen: float
    last_seen: float
    start: float = None  # from /proc/PID/stat, when it agrees with the samples
    nested: bool = False  # below another module process: its time is already in that one's

    def seconds(self, interval):
        return self.last_seen - (self.first_seen if self.start is None else self.start) + interval


class PeakSampler(threading.Thread):
    """Run while a process tree executes. ``peaks`` holds the highest VmHWM in MB (10^6 bytes) per kind of Python
    process; ``modules`` the module processes seen; ``module_seconds`` their summed lifetime (see the module
    docstring). ``stop()`` returns (peaks, module_seconds)."""

    def __init__(self, root_pid, interval=0.02):
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.peaks = {CONTROLLER: 0.0, MODULE: 0.0}
        self.modules = {}  # (pid, start ticks) -> ModuleProcess
        self.previous = time.monotonic()  # when the sample before the current one began
        self.stopping = threading.Event()

    @property
    def module_seconds(self):
        return sum(module.seconds(self.interval) for module in self.modules.values() if not module.nested)

    def _start_time(self, ticks, now, offset):
        """The process start in time.monotonic(), if /proc's clock agrees with the samples: it must lie after the
        previous sample began (else the process was already there, not yet Python, or was missed) and not after
        this one."""
        if ticks is None or offset is None:
            return None
        start = ticks * _TICK - offset
        if self.previous - _TICK <= start <= now + _TICK:
            return min(start, now)
        return None

    def sample(self):
        now, offset = time.monotonic(), _boot_offset()
        in_module = {}  # pid -> it is a module process or below one
        for pid, ticks, parent in _walk(self.root_pid):
            kind = _python_kind(pid)
            key = (pid, ticks)
            if kind:
                self.peaks[kind] = max(self.peaks[kind], vm_hwm_kib(pid) * 1024 / 1e6)
            if kind == MODULE:
                if key not in self.modules:
                    self.modules[key] = ModuleProcess(pid, now, now, self._start_time(ticks, now, offset),
                                                      nested=in_module.get(parent, False))
                self.modules[key].last_seen = now
            in_module[pid] = kind == MODULE or in_module.get(parent, False)
        self.previous = now

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()
        return dict(self.peaks), self.module_seconds

