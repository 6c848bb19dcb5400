"""Structured (JSON) logging shared by web and worker."""

from __future__ import annotations

import json
import logging
import sys

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields such as sketch_id."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as JSON."""
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(settings) -> None:
    """Install one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_sketchwatch", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._sketchwatch = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if settings.log_json else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
