"""Keep secrets out of everything we write: Slack messages, artifacts, reports, logs.

Two nets: the exact values of the secrets we know (tokens from config), and the shapes of key
material (a 32-byte hex private key, a Slack token), whatever their source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
_SHAPES = (
    re.compile(r"\b(0x)?[0-9a-fA-F]{64}\b"),  # secp256k1 private key (and anything that looks like one)
    re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{8,}\b"),  # Slack tokens
)


def redact(text: str, known_secrets: Iterable[str | None] = ()) -> str:
    for secret in known_secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    for shape in _SHAPES:
        text = shape.sub(REDACTED, text)
    return text
