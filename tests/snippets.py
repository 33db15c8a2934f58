"""The code blocks of the docs, so that tests run them as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"

_BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(page: str, language: str, **tags: str) -> list[str]:
    """The ``language`` blocks of ``docs/<page>``, those whose info string has ``tags``."""
    wanted = {f"{key.replace('_', '-')}={value}" for key, value in tags.items()}
    return [
        body
        for lang, info, body in _BLOCK.findall((DOCS / page).read_text())
        if lang == language and wanted <= set(info.split())
    ]


def block(page: str, language: str, **tags: str) -> str:
    (found,) = blocks(page, language, **tags)
    return found
