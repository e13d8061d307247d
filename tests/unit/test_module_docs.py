"""Each module's DOCUMENTATION is what ansible-doc shows and matches its real argument spec."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "modules")) if name.endswith(".py"))


class _Captured(Exception):
    pass


def _argument_spec(name, monkeypatch):
    """The spec main() really passes to AnsibleModule."""
    module = importlib.import_module("ansible_collections.christmas.recovery.plugins.modules." + name)

    def capture(argument_spec, **_kwargs):
        raise _Captured(argument_spec)

    monkeypatch.setattr(module, "AnsibleModule", capture)
    with pytest.raises(_Captured) as caught:
        module.main()
    return caught.value.args[0]


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_are_exactly_the_argument_spec(name, monkeypatch):
    doc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "--json",
                          "christmas.recovery." + name], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg")))
    options = json.loads(doc.stdout)["christmas.recovery." + name]["doc"]["options"]
    spec = _argument_spec(name, monkeypatch)
    assert set(options) == set(spec)
    for option, settings in spec.items():
        assert options[option]["type"] == settings.get("type", "str"), option
        assert options[option].get("default") == settings.get("default"), option
        assert options[option].get("description"), option
    assert all(spec[o].get("no_log") for o in spec if "password" in o)


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_are_valid_yaml(name):
    module = importlib.import_module("ansible_collections.christmas.recovery.plugins.modules." + name)
    examples = yaml.safe_load(module.EXAMPLES)
    assert all("christmas.recovery." + name in task for task in examples)
    assert yaml.safe_load(module.RETURN)
