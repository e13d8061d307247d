"""Timing: commands run in their own process group with a memory sampler; sides of an operation run alternately."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from procmem import CONTROLLER, MODULE, PeakSampler

RUNNING = set()  # children being timed; killed by stop_children() when the benchmark is interrupted


class BenchError(Exception):
    """A command or a check failed; the message names it and where its output is."""


@dataclass
class Sample:
    seconds: float
    peaks: dict = field(default_factory=dict)  # MB of VmHWM per kind of Python process (controller, module)
    module_seconds: float = 0.0  # summed lifetime of the module processes (procmem.PeakSampler)


def run_command(argv, log_path, env=None, cwd=None):
    """Run ``argv`` to completion with its output in ``log_path``; return its Sample (wall seconds, peak memory,
    module seconds)."""
    with open(log_path, "ab") as log:
        log.write(("$ %s\n" % " ".join(argv)).encode())
        log.flush()
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, start_new_session=True)
        RUNNING.add(proc)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        try:
            returncode = proc.wait()
        finally:
            peaks, module_seconds = sampler.stop()
            RUNNING.discard(proc)
        seconds = time.monotonic() - started
    if returncode != 0:
        raise BenchError("%s exited with %d; output in %s:\n%s" % (os.path.basename(argv[0]), returncode, log_path,
                                                                  tail(log_path)))
    return Sample(seconds, peaks, module_seconds)


def run_commands(commands, log_path, env=None, cwd=None):
    """Run several commands one after the other (each argv may be a callable producing it); one Sample in total."""
    total = Sample(0.0, {CONTROLLER: 0.0, MODULE: 0.0})
    for argv in commands:
        found = run_command(argv() if callable(argv) else argv, log_path, env, cwd)
        total.seconds += found.seconds
        total.module_seconds += found.module_seconds
        total.peaks = {kind: max(total.peaks[kind], found.peaks.get(kind, 0.0)) for kind in total.peaks}
    return total


def tail(path, lines=25):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def stop_children():
    for proc in list(RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    RUNNING.clear()


@dataclass
class Side:
    """One way of doing an operation: ``prepare(run)`` (untimed) returns a context for ``measure`` (timed, returns a
    Sample; by default the context is the run number); ``check`` (untimed) confirms the result; ``cleanup`` always
    runs."""

    label: str
    measure: Callable
    prepare: Callable = lambda run: run
    check: Callable = lambda context: None
    cleanup: Callable = lambda context: None
    tool: bool = True


@dataclass
class Operation:
    name: str
    component: str  # db, redis, config, set or none: which data size the growth is measured against
    sides: list
    setup: Callable = lambda: None  # untimed, once before the runs
    target: float = None  # the tool/baseline ratio the product aims at, at medium and large sizes

    @property
    def baseline(self):
        return next((side for side in self.sides if not side.tool), None)


def run_side(side, run):
    context = side.prepare(run)
    os.sync()  # the writes of the preparation and of the run before are on disk, not flushed during this one
    try:
        sample = side.measure(context)
        side.check(context)
        return sample
    finally:
        side.cleanup(context)


def measure_operation(operation, runs, log=print):
    """Each side ``runs`` times, alternating (tool, baseline, tool, baseline, ...); returns {label: [Sample]}."""
    operation.setup()
    samples = {side.label: [] for side in operation.sides}
    for run in range(runs):
        for side in operation.sides:
            sample = run_side(side, run)
            samples[side.label].append(sample)
            log("  %-28s run %d/%d  %8.2f s%s" % (side.label, run + 1, runs, sample.seconds, _peak_text(sample)))
    return samples


def _peak_text(sample):
    if not any(sample.peaks.values()):
        return ""
    return "   module %.2f s   peak MB: module %.0f, controller %.0f" % (
        sample.module_seconds, sample.peaks.get(MODULE, 0), sample.peaks.get(CONTROLLER, 0))


def median_seconds(samples):
    return statistics.median(sample.seconds for sample in samples)


def median_module_seconds(samples):
    return statistics.median(sample.module_seconds for sample in samples)


def max_peak(samples, kind):
    return max((sample.peaks.get(kind, 0.0) for sample in samples), default=0.0)
