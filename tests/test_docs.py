"""The Python snippets of the pages of each way in, run as written.

Each page's ``python`` blocks run in order in one namespace, with
``COORDINATOR_DSN`` naming a fresh, migrated database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from snippets import blocks

PAGES = ["sync.md", "drivers.md", "logging.md"]


@pytest.fixture
def page_env(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The DSN, and the logging set-up restored afterwards."""
    monkeypatch.setenv("COORDINATOR_DSN", dsn)
    root, library = logging.getLogger(), logging.getLogger("coordinator")
    saved = (list(root.handlers), root.level, list(library.handlers), library.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    library.handlers[:], library.level, library.propagate = saved[2], saved[3], True


@pytest.mark.usefixtures("page_env")
@pytest.mark.parametrize("page", PAGES)
def test_the_snippets_of_the_page_run(page: str) -> None:
    snippets = blocks(page, "python")
    assert snippets, f"docs/{page} has no python block"
    namespace: dict[str, object] = {"__name__": f"docs.{page}"}
    for number, code in enumerate(snippets, 1):
        exec(compile(code, f"docs/{page} (block {number})", "exec"), namespace)
    assert os.environ["COORDINATOR_DSN"]
