# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets: the manifest, making, verifying, restoring, encrypting and retiring a set of DB + Redis + config."""
