# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Core: errors, private files and atomic writes, external commands, the directory lock, safe paths, the module
runner. Imports no component."""
