# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of streaming replication: the settings a primary needs, SCRAM verifiers, conninfo, pgpass and
postgresql.auto.conf quoting, fenced start settings, and what makes a standby wrong."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import socket
import stringprep
import unicodedata

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")
SCRAM_ITERATIONS = 4096
def normalize_setting(value):
    """A GUC value as pg_settings and the config files spell it, comparable: booleans as on/off, the rest as text."""
    text = str(value).strip()
    lowered = text.lower()
    if lowered in ("on", "true", "yes"):
        return "on"
    if lowered in ("off", "false", "no"):
        return "off"
    return text


def wanted_settings(max_wal_senders, max_replication_slots, listen_addresses):
    return {
        "wal_level": "replica",
        "max_wal_senders": str(max_wal_senders),
        "max_replication_slots": str(max_replication_slots),
        "hot_standby": "on",
        "listen_addresses": listen_addresses,
    }


def setting_satisfied(name, wanted, value):
    """wal_level logical already includes everything replica needs: never downgrade it."""
    if name == "wal_level":
        return value in ("replica", "logical")
    return normalize_setting(value) == normalize_setting(wanted)


def settings_to_change(wanted, current):
    """Names whose value after a restart would differ from ``wanted``; ``current`` maps each name to a dict with the
    running ``setting``, its ``source`` and the value the config files hold (``file_value``, None when unset)."""
    changes = []
    for name, value in wanted.items():
        row = current[name]
        if row["source"] == "command line":
            if not setting_satisfied(name, value, row["setting"]):
                raise RecoveryError("%s is set on the server's command line (%s); ALTER SYSTEM cannot change it to %s"
                                    % (name, row["setting"], value))
            continue
        future = row["file_value"] if row["file_value"] is not None else row["boot_val"]
        if not setting_satisfied(name, value, future):
            changes.append(name)
    return changes


def check_slot_name(name):
    if not SLOT_NAME_RE.match(name or ""):
        raise RecoveryError("replication slot name %r is invalid: use 1 to 63 lower-case letters, digits and _" % name)
    return name


def saslprep(password):
    """RFC 4013 SASLprep as PostgreSQL applies it to SCRAM passwords: ASCII as is; otherwise NFKC with spaces mapped
    and soft hyphens and the like removed; a string SASLprep prohibits is used unchanged, as the server does."""
    if password.isascii():
        return password
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch))
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3, stringprep.in_table_c4,
                  stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
                  stringprep.in_table_c9, stringprep.in_table_a1)
    if not prepared or any(check(ch) for ch in prepared for check in prohibited):
        return password
    if any(stringprep.in_table_d1(ch) for ch in prepared) and (
            any(stringprep.in_table_d2(ch) for ch in prepared)
            or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))):
        return password
    return prepared


def _scram_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def scram_verifier(password, salt=None, iterations=SCRAM_ITERATIONS):
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password``: sent instead of the password, so not even the
    server's statement log can show it."""
    salt = salt if salt is not None else os.urandom(16)
    stored, server = _scram_keys(password, salt, iterations)
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored), b64(server))


def password_matches(password, stored, role):
    """Whether pg_authid.rolpassword ``stored`` (SCRAM or md5) is the hash of ``password`` for ``role``."""
    if not stored:
        return False
    match = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$", stored)
    if match:
        iterations, salt, stored_key, server_key = match.groups()
        try:
            got = _scram_keys(password, base64.b64decode(salt), int(iterations))
            want = (base64.b64decode(stored_key), base64.b64decode(server_key))
        except ValueError:
            return False
        return all(hmac.compare_digest(a, b) for a, b in zip(got, want, strict=True))
    if stored.startswith("md5"):
        return hmac.compare_digest(stored, "md5" + hashlib.md5((password + role).encode("utf-8")).hexdigest())
    return False


def conninfo_value(value):
    """A libpq keyword value, quoted."""
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "\\'")


def conninfo(params):
    return " ".join("%s=%s" % (key, conninfo_value(value)) for key, value in params.items() if value is not None)


def parse_conninfo(text):
    """libpq's keyword=value syntax into a dict (the subset pg_basebackup -R writes: quoted or bare values)."""
    result = {}
    for match in re.finditer(r"\s*(\w+)\s*=\s*('((?:[^'\\]|\\.)*)'|(\S+))", text or ""):
        key, _whole, quoted, bare = match.groups()
        result[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
    return result


def auto_conf_value(value):
    """A postgresql.auto.conf value as ALTER SYSTEM writes it: quotes and backslashes doubled."""
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "''")


def parse_auto_conf_value(raw):
    raw = raw.strip()
    if raw.startswith("'") and raw.endswith("'"):
        inner = raw[1:-1]
        return re.sub(r"''|\\(.)", lambda m: "'" if m.group(0) == "''" else m.group(1), inner)
    return raw


def set_auto_conf(text, name, value):
    """``text`` of a postgresql.auto.conf with ``name`` set to ``value`` (one line, replacing any earlier ones)."""
    lines = [line for line in text.splitlines()
             if not re.match(r"^\s*%s\s*=" % re.escape(name), line)]
    lines.append("%s = %s" % (name, auto_conf_value(value)))
    return "\n".join(lines) + "\n"


def read_auto_conf(text, name):
    value = None
    for line in text.splitlines():
        match = re.match(r"^\s*%s\s*=\s*(.*)$" % re.escape(name), line)
        if match:
            value = parse_auto_conf_value(match.group(1))
    return value


def start_conf_value(text):
    """The word of a Debian start.conf (auto, manual or disabled): its first line that is not a comment."""
    for line in (text or "").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            return word
    return None


def fenced_start_conf(text):
    """``text`` with its value line(s) replaced by ``manual``, comments kept."""
    kept = [line for line in (text or "").splitlines() if not line.split("#", 1)[0].strip()]
    return "\n".join(kept + ["manual"]) + "\n"


def rebuild_stamp(now=None):
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def standby_problem(state, primary_host, primary_port, slot_name, same_host=None):
    """Why ``state`` (as :func:`server_info` reports it) is not a standby streaming from the primary; None when it
    is. ``same_host(a, b)`` decides whether two host names are the same host (exact text by default)."""
    same_host = same_host or (lambda a, b: a == b)
    if state["role"] == "down":
        return "is down (%s)" % state.get("error", "no answer")
    if not state["in_recovery"]:
        return "is a primary (not in recovery)"
    receiver = state.get("wal_receiver")
    if not receiver:
        return "is not streaming from %s:%s (wal receiver: none)" % (primary_host, primary_port)
    if receiver["status"] != "streaming":
        return "is not streaming from %s:%s (wal receiver: %s)" % (primary_host, primary_port, receiver["status"])
    if receiver["sender_port"] != primary_port or not same_host(receiver["sender_host"], primary_host):
        return "streams from %s:%s, not from %s:%s" % (receiver["sender_host"], receiver["sender_port"],
                                                        primary_host, primary_port)
    if slot_name and receiver["slot_name"] != slot_name:
        return "streams through slot %s, not %s" % (receiver["slot_name"] or "none", slot_name)
    return None


def _addresses(host):
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return {host}


def same_host(a, b):
    """Two host names (or addresses) that resolve to a common address."""
    if a is None or b is None:
        return False
    return a == b or bool(_addresses(a) & _addresses(b))


# ---------------------------------------------------------------- reading a server

