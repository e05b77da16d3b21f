"""Dotted paths into JSON documents (`checks.api_auth.status`): the bot's /health and its config file.

Every path the runbook reads from a bot is configuration; `dig` reads one, `resolve` also says, when a
path does not resolve, how far it got and what was there instead (for `runbook doctor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def dig(document: Any, dotted: str) -> Any:
    """`dig({"a": {"b": 1}}, "a.b") == 1`; None when any part of the path is absent."""
    current = document
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return None
    return current


@dataclass
class Resolution:
    """A path read from a document: its value, or where it stopped and what that place holds instead."""

    path: str
    found: bool
    value: Any = None
    resolved_prefix: str = ""  # the longest leading part of the path that exists ("" for the root)
    missing: str = ""  # the first part that does not
    available: list[str] = field(default_factory=list)  # the keys at the place it stopped
    holds: str | None = None  # what is there when it is not an object (e.g. "a list", "the number 3")

    def describe(self) -> str:
        if self.found:
            return f"{self.path} = {_short(self.value)}"
        where = self.resolved_prefix or "the top level"
        if self.holds is not None:
            return f"{self.path}: {where} is {self.holds}, so it has no {self.missing!r}"
        keys = ", ".join(self.available[:20]) + (" …" if len(self.available) > 20 else "")
        return f"{self.path}: no {self.missing!r} in {where} (it has: {keys or 'nothing'})"


def resolve(document: Any, dotted: str) -> Resolution:
    current, walked = document, []
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
            walked.append(part)
            continue
        result = Resolution(path=dotted, found=False, resolved_prefix=".".join(walked), missing=part)
        if isinstance(current, dict):
            result.available = sorted(str(key) for key in current)
        else:
            result.holds = _kind(current)
        return result
    return Resolution(path=dotted, found=True, value=current, resolved_prefix=dotted)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"the {type(value).__name__} {_short(value)}"


def _short(value: Any, limit: int = 120) -> str:
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"
