"""Logging set-up: readable lines by default, or one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import re
import time

_SESSION = re.compile(r"\bsession ([A-Za-z0-9_-]{6,})")
# a secret in a logged URL or message: ?token=/access_token= values, Bearer credentials, anything shaped like a JWT
_SECRET = re.compile(
    r"(?i)(?<=[?&]token=)[^&\s\"']+|(?<=[?&]access_token=)[^&\s\"']+|(?<=bearer )[\w.~+/-]+=*"
    r"|\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]*"
)


def redact(text: str) -> str:
    """`text` with tokens replaced by REDACTED (realtime/auth.py keeps them out of the access log at the source;
    this is the second line, for anything else that logs one)."""
    return _SECRET.sub("REDACTED", text)


class RedactTokens(logging.Filter):
    """A handler filter: every record's message, tokens redacted (formatted once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", "session"?, "exc"?}: the session id is lifted out of the
    message ("session <id> ...", the form every session log line uses) so logs can be filtered by it."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        m = _SESSION.search(msg)
        if m:
            out["session"] = m.group(1)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
