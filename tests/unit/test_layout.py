"""The packages of plugins/module_utils and what each may import (docs/architecture.md draws the same picture)."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
PREFIX = "ansible_collections.christmas.recovery.plugins.module_utils."
COMPONENTS = {"db", "redis", "config", "wal", "objectstore"}
# Each package and the packages it may import besides itself: core imports no component, components import only
# core, and only sets/ (and the layers above it) brings components together.
ALLOWED = {
    "core": set(),
    **{component: {"core"} for component in COMPONENTS},
    "sets": {"core"} | COMPONENTS,
    "transport": {"core", "sets"} | COMPONENTS,
    "platform": {"core", "sets", "transport"} | COMPONENTS,
}
MAX_LINES = 520


def _files():
    for package in sorted(os.listdir(MODULE_UTILS)):
        directory = os.path.join(MODULE_UTILS, package)
        if os.path.isdir(directory) and not package.startswith("__"):
            for name in sorted(os.listdir(directory)):
                if name.endswith(".py"):
                    yield package, os.path.join(directory, name)


def _imported_packages(path):
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            yield node.module[len(PREFIX):].split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module == PREFIX.rstrip("."):
            yield from (alias.name for alias in node.names)


def test_every_file_is_in_a_known_package():
    loose = [name for name in os.listdir(MODULE_UTILS) if name.endswith(".py")]
    assert not loose, "module_utils files outside a package: %s" % loose
    packages = {package for package, _ in _files()}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)


@pytest.mark.parametrize("package,path", list(_files()), ids=lambda value: os.path.basename(str(value)))
def test_imports_follow_the_layers(package, path):
    wrong = sorted({imported for imported in _imported_packages(path)
                    if imported != package and imported not in ALLOWED[package]})
    assert not wrong, "%s (%s/) imports %s" % (os.path.relpath(path, ROOT), package, wrong)


@pytest.mark.parametrize("package,path", list(_files()), ids=lambda value: os.path.basename(str(value)))
def test_files_stay_small(package, path):
    with open(path, encoding="utf-8") as handle:
        lines = sum(1 for _ in handle)
    assert lines <= MAX_LINES, "%s has %d lines: split it along a seam" % (os.path.relpath(path, ROOT), lines)
