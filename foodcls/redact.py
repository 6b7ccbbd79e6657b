"""Credentials never leave through what foodcls prints, serves or logs: a password or token inside a URI
(`postgresql://user:secret@host/db`, `https://user:token@host/`, `https://token@host/`, `?token=…`) is
replaced by `***` in every config that `GET /model`, `runs show`, `runs compare`, the model card, `--json`
and MLflow's params show, and in the checkpoint's copy of the config (a checkpoint is shared; config.yaml
in the run directory keeps the URI, which `--resume` needs to log the run)."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@ — the password may hold anything but '@', '/' and whitespace.
_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):(?P<secret>[^\s/@]+)@")
# http(s)://token@ — a token given as the user name (GitHub, GitLab and Hugging Face URLs).
_TOKEN_USER = re.compile(r"(?P<head>\bhttps?://)(?P<secret>[^\s/@:]+)@", re.IGNORECASE)
# ?password=…, &token=… in a query string.
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|auth|secret|api_key|apikey|key|sig|signature)=)"
                    r"(?P<secret>[^&#\s]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """The text with every credential in a URI replaced by ***."""
    if "@" not in text and "=" not in text:  # the common case, without a regex
        return text
    text = _PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _TOKEN_USER.sub(lambda m: m[0] if m["secret"] == MASK else f"{m['head']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_secrets(value: Any) -> Any:
    """A copy of a config (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_secrets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value
