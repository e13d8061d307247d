# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""christmas_drill_report runs on the controller: the pages and the chart are rendered where matplotlib is installed
(requirements.txt) and the report is read, whichever host held the incident database."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform.drill_report import (
    argument_spec,
    write_report,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=argument_spec())
        try:
            result.update(write_report(args["records"], args["dest"], check_mode=self._task.check_mode))
        except RecoveryError as err:
            result.update(failed=True, msg=str(err))
        except ImportError as err:
            result.update(failed=True, msg="the drill report needs matplotlib on the controller "
                                           "(pip install -r requirements.txt): %s" % err)
        return result
