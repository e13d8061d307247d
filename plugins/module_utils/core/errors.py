# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of the collection: a one-line message meant for the operator."""

from __future__ import annotations


class RecoveryError(Exception):
    """Bad input or a failed step; ``str(err)`` is a single line naming what is wrong."""

    def __init__(self, message, **details):
        super().__init__(" ".join(str(message).split()))
        self.details = details


def one_line(err):
    """The one-line message of any error: a RecoveryError's own, others (OSError, ...) flattened the same way."""
    return str(err if isinstance(err, RecoveryError) else RecoveryError(err))
