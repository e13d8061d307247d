#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_notify
short_description: Tell a chat webhook how a backup, verification or other job went
description:
  - "POSTs one small JSON document to I(url): C(text) (one line, as Slack and Mattermost incoming webhooks show it,
    e.g. C(christmas.recovery backup on db1 failed: ...)) and the same facts as fields C(host), C(what), C(status),
    C(reason) and C(set_id)."
  - Any 2xx answer is success. Redirects are not followed. TLS certificates are verified unless I(validate_certs) is
    false. Proxies from the environment (C(https_proxy), C(no_proxy)) apply.
  - "The URL is treated as a secret (webhooks carry their token in it): errors name only its scheme, host and port,
    e.g. C(webhook https://chat.example.com answered 500)."
  - Check mode sends nothing and returns the document.
version_added: 0.1.0
author: Christmas platform operations
options:
  url:
    description: The webhook's URL, http:// or https://. Keep it in Ansible Vault.
    type: str
    required: true
  host:
    description: The host the job ran for.
    type: str
    required: true
  what:
    description: The job, e.g. C(backup), C(verify).
    type: str
    required: true
  status:
    description: How it went.
    type: str
    required: true
    choices: [succeeded, failed]
  reason:
    description: The failure's message (made one line, at most 1000 characters).
    type: str
    default: ""
  set_id:
    description: The backup set concerned, when there is one.
    type: str
    default: ""
  text:
    description: The C(text) shown in the chat; by default made from I(what), I(host), I(status), I(set_id) and
      I(reason).
    type: str
  timeout:
    description: Seconds to wait for the webhook's answer.
    type: int
    default: 10
  headers:
    description: Extra HTTP headers, e.g. an C(Authorization) the webhook needs. Values are treated as secrets.
    type: dict
    default: {}
  validate_certs:
    description: Verify the webhook's TLS certificate and host name.
    type: bool
    default: true
  fail_on_error:
    description:
      - When false, a webhook that cannot be reached or refuses the document is a warning and the result's C(error),
        not a failure; for notifications of a job that is failing already, whose error must stay the one reported.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Tell the operations channel
  christmas.recovery.christmas_notify:
    url: "{{ vault_christmas_webhook }}"
    host: "{{ inventory_hostname }}"
    what: backup
    status: failed
    reason: "{{ ansible_failed_result.msg }}"
    fail_on_error: false
"""

RETURN = r"""
document:
  description: The JSON document sent (or, in check mode, that would be).
  returned: unless an error was turned into a warning
  type: dict
  sample: {"text": "christmas.recovery backup on db1 failed: database db1:5432 refused the password",
           "host": "db1", "what": "backup", "status": "failed",
           "reason": "database db1:5432 refused the password", "set_id": ""}
sent:
  description: Whether it was sent (false in check mode).
  returned: unless an error was turned into a warning
  type: bool
status_code:
  description: The webhook's HTTP status.
  returned: when sent
  type: int
webhook:
  description: The webhook's scheme, host and port (never its path or query).
  returned: unless an error was turned into a warning
  type: str
  sample: https://chat.example.com
error:
  description: The error turned into a warning (I(fail_on_error=false)).
  returned: when an error was turned into a warning
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.notify import STATUSES, notify


def main():
    argument_spec = {
        "url": {"type": "str", "required": True, "no_log": True},
        "host": {"type": "str", "required": True},
        "what": {"type": "str", "required": True},
        "status": {"type": "str", "required": True, "choices": list(STATUSES)},
        "reason": {"type": "str", "default": ""},
        "set_id": {"type": "str", "default": ""},
        "text": {"type": "str"},
        "timeout": {"type": "int", "default": 10},
        "headers": {"type": "dict", "default": {}, "no_log": True},
        "validate_certs": {"type": "bool", "default": True},
        "fail_on_error": {"type": "bool", "default": True},
    }
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params

    def work(_progress):
        return notify(params["url"], params["host"], params["what"], params["status"], reason=params["reason"],
                      set_id=params["set_id"], text=params["text"], timeout=params["timeout"],
                      headers=params["headers"], validate_certs=params["validate_certs"],
                      check_mode=module.check_mode)

    run(module, work, warn_only=not params["fail_on_error"])


if __name__ == "__main__":
    main()
