# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Webhook notifications: one small JSON document POSTed to a chat webhook. The URL is a secret (webhooks carry
their token in the path or query): messages name only its scheme, host and port."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

STATUSES = ("succeeded", "failed")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
MAX_REASON = 1000  # chat messages stay readable; the play's output has the whole error


def origin(url):
    """scheme://host[:port] of ``url``: what may be shown of a webhook."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port
    except (ValueError, TypeError):
        return "(unparsable URL)"
    if not host:
        return "(URL without a host)"
    shown = "[%s]" % host if ":" in host else host
    return "%s://%s%s" % (parts.scheme, shown, ":%d" % port if port else "")


def check_url(url):
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except (ValueError, TypeError):
        raise RecoveryError("webhook URL cannot be parsed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RecoveryError("webhook %s: the URL must be http:// or https:// with a host" % origin(url))


def check_headers(headers):
    """Header names checked; values (often tokens) never shown, only refused when they could split the request."""
    checked = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            raise RecoveryError("webhook header name %r is not a valid HTTP header name" % (name,))
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or re.search(r"[\r\n\0]", str(value)):
            raise RecoveryError("webhook header %s must be one line of text" % name)
        checked[name] = str(value)
    return checked


def one_line(text, limit=MAX_REASON):
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def document(host, what, status, reason="", set_id="", text=None):
    """The JSON sent: a Slack/Mattermost-compatible one-line ``text`` and the same facts as fields."""
    if status not in STATUSES:
        raise RecoveryError("status must be one of %s, got %r" % (", ".join(STATUSES), status))
    reason, set_id = one_line(reason), one_line(set_id, 64)
    if text is None:
        text = "christmas.recovery %s on %s %s" % (what, host, status)
        if set_id:
            text += " (set %s)" % set_id
        if reason:
            text += ": " + reason
    return {"text": one_line(text), "host": host, "what": what, "status": status, "reason": reason,
            "set_id": set_id}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered, not followed: it would resend the document somewhere the operator did not name."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post(url, body, timeout=10, headers=None, validate_certs=True):
    """POST ``body`` (a dict, as JSON); return the HTTP status. Errors name only the webhook's origin."""
    check_url(url)
    shown = origin(url)
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in check_headers(headers).items():
        request.add_header(name, value)
    context = ssl.create_default_context()
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as answer:
            answer.read(65536)
            return answer.status
    except urllib.error.HTTPError as err:
        err.close()
        raise RecoveryError("webhook %s answered %d" % (shown, err.code)) from None
    except urllib.error.URLError as err:
        reason = err.reason
    except (OSError, ValueError, http.client.HTTPException) as err:  # timeouts, resets, malformed answers
        reason = err
    raise RecoveryError("webhook %s did not answer: %s" % (shown, _describe(reason, url)))


def _describe(reason, url):
    """An error's text, with anything of the URL beyond its origin cut out (some errors repeat the request)."""
    text = one_line(getattr(reason, "strerror", None) or reason or "no answer", 300)
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.netloc.rpartition("@")[0]):
        if secret and secret not in ("/", ""):
            text = text.replace(secret, "...")
    return text


def notify(url, host, what, status, reason="", set_id="", text=None, timeout=10, headers=None, validate_certs=True,
           check_mode=False):
    """Send the notification (not in check mode); returns {"document", "sent", "status_code", "changed"}."""
    body = document(host, what, status, reason, set_id, text)
    check_url(url)
    check_headers(headers)
    if check_mode:
        return {"document": body, "sent": False, "webhook": origin(url), "changed": True}
    code = post(url, body, timeout, headers, validate_certs)
    return {"document": body, "sent": True, "status_code": code, "webhook": origin(url), "changed": True}
