"""Secrets out of every text Edge Inspector writes: one rule, applied where text is made.

Camera URLs carry credentials in two places: the user information (`rtsp://admin:pw@host/`) and
the query (`http://cam/snap.jpg?user=admin&pwd=pw`). Libraries repeat a URL in their error
texts (PyAV, OpenCV, aiohttp's response errors), so redacting the configured URL where we print
it is not enough. `redact` finds both forms in any text, whatever produced it, and the places
where text leaves the engine use it: every `EdgeInspectorError`'s message (so errors, station
states built from them, API answers, MQTT payloads and log lines that quote them), the station
state's `error` field, and the command line's log handler (what else gets logged).
"""

from __future__ import annotations

import logging
import re

__all__ = ["SECRET_QUERY_KEYS", "RedactingFilter", "redact"]

MASK = "***"
# Query parameters that hold a credential, by the names cameras and services use.
SECRET_QUERY_KEYS = (
    "pwd",
    "pass",
    "passwd",
    "password",
    "token",
    "access_token",
    "auth",
    "key",
    "apikey",
    "api_key",
    "secret",
    "sig",
    "signature",
)
# scheme://user:password@ or scheme://user@ (a user name alone can be a token), up to the last
# "@" before the host, as URL parsers read it (a password may hold an unencoded "@")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"<>?#]*@")
_QUERY = re.compile(
    r"(?i)([?&;](?:" + "|".join(map(re.escape, SECRET_QUERY_KEYS)) + r")=)[^&#\s'\"<>]*"
)
_AUTH_HEADER = re.compile(r"(?i)\b(authorization:?\s*(?:basic|bearer|digest)\s+)[^\s'\",]+")


def redact(text: str) -> str:
    """The text with URL credentials, credential query values and authorization headers
    replaced by `***`; everything else as it was."""
    if "://" not in text and "=" not in text and "uthorization" not in text:
        return text  # the common case, cheaply
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _QUERY.sub(rf"\1{MASK}", text)
    return _AUTH_HEADER.sub(rf"\1{MASK}", text)


class RedactingFilter(logging.Filter):
    """For a log handler: each record's message (arguments merged in) is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler's formatter reports it, as always
            return True
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback's last line repeats the exception's text
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message:
            record.msg, record.args = clean, None
        return True
