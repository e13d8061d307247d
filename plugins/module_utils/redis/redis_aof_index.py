# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The index of an AOF repository (see ``redis_aof``): what it holds, which seconds it restores, its files checked.

``index.json`` lists the generations oldest first. Each has its base (path, size, SHA-256, the second it was made),
its incr files (each a list of pieces: offset, size, SHA-256; the first and last ``#TS`` annotation shipped) and
``shipped_at``, the time of its newest shipment: every write made before it is in the pieces.
"""

from __future__ import annotations

import json
import math
import os
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import sha256_file
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock

INDEX = "index.json"
FORMAT = 1


def reading(repo_dir):
    """The repository's lock, shared: no shipment or prune removes a file while it is read."""
    if not os.path.isdir(repo_dir):
        raise RecoveryError("no AOF repository at %s" % repo_dir)
    return DirectoryLock(repo_dir, shared=True)


def load_index(repo_dir):
    path = os.path.join(repo_dir, INDEX)
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except FileNotFoundError:
        return {"format": FORMAT, "generations": []}
    except ValueError as err:
        raise RecoveryError("AOF repository index %s is damaged: %s" % (path, err)) from None
    if index.get("format") != FORMAT:
        raise RecoveryError("AOF repository index %s has format %r, this tool reads %d" % (
            path, index.get("format"), FORMAT))
    return index


def generation_range(generation):
    """(first, last) second the generation restores; last < first while it restores none yet."""
    return generation["base_time"], math.floor(generation["shipped_at"]) - 1


def window(repo_dir):
    """{"start", "end", "gaps": [[first, last], ...]} of the seconds the repository restores, None when none."""
    return window_of(load_index(repo_dir))


def window_of(index):
    ranges = [generation_range(gen) for gen in index["generations"]]
    ranges = [(first, last) for first, last in ranges if first <= last]
    if not ranges:
        return None
    gaps, reached = [], ranges[0][1]
    for first, last in ranges[1:]:
        if first > reached + 1:
            gaps.append([reached + 1, first - 1])
        reached = max(reached, last)
    return {"start": ranges[0][0], "end": reached, "gaps": gaps}


def generation_for(index, when, repo_dir):
    """The newest generation whose base is at or before ``when``; refused when ``when`` is not in the window."""
    span = window_of(index)
    chosen = None
    for generation in index["generations"]:
        first, last = generation_range(generation)
        if first <= when:
            chosen = generation if when <= last else None
    if chosen is None:
        if span is None:
            raise RecoveryError("AOF repository %s restores no point yet: ship the AOF first" % repo_dir)
        raise RecoveryError("AOF repository %s cannot restore %s: its window is %s%s" % (
            repo_dir, _when(when), _span(span), "".join(
                " (gap %s to %s)" % (_when(first), _when(last)) for first, last in span["gaps"])))
    return chosen


def _when(seconds):
    return "%d (%s)" % (seconds, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)))


def _span(span):
    return "%s to %s" % (_when(span["start"]), _when(span["end"]))


def generation_files(generation):
    """Every stored file of a generation: (path in the repository, size, sha256)."""
    base = generation["base"]
    yield base["path"], base["size"], base["sha256"]
    for incr in generation["incr"]:
        for piece in incr["pieces"]:
            yield piece["path"], piece["size"], piece["sha256"]


def check_files(repo_dir, generations):
    """Every file of ``generations`` present with its size and SHA-256; raises naming the first that is not."""
    count = size = 0
    for generation in generations:
        for path, expected_size, expected_sha in generation_files(generation):
            full = os.path.join(repo_dir, path)
            try:
                actual = sha256_file(full)
            except FileNotFoundError:
                raise RecoveryError("AOF repository %s is missing %s" % (repo_dir, path)) from None
            if actual != (expected_size, expected_sha):
                raise RecoveryError("AOF repository file %s is damaged: %d bytes, SHA-256 %s..., the index says %d "
                                    "bytes, %s..." % (full, actual[0], actual[1][:12], expected_size,
                                                      expected_sha[:12]))
            count, size = count + 1, size + expected_size
    return count, size


def verify_repository(repo_dir, start=None, end=None):
    """Every file needed to restore the seconds from ``start`` to ``end`` (default: the whole window) is there with
    its checksum. Returns {"files", "bytes", "window"}."""
    with reading(repo_dir):
        index = load_index(repo_dir)
        needed = []
        for position, generation in enumerate(index["generations"]):
            first, last = generation_range(generation)
            later = index["generations"][position + 1:]
            # a generation is needed from its own start until the next one's start, when it restores anything
            until = min([generation_range(gen)[0] for gen in later] + [last + 1]) - 1
            if first <= until and (start is None or until >= start) and (end is None or first <= end):
                needed.append(generation)
        files, size = check_files(repo_dir, needed)
    return {"files": files, "bytes": size, "window": window_of(index)}
