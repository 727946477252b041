"""Every ```python block in docs/*.md runs, so the documentation cannot rot.

Blocks of one page run in order in one namespace (a page may build on its earlier
blocks), inside a temporary working directory so examples that write files write there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The fenced ```python blocks of one markdown page, in order."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p))


def test_docs_have_runnable_examples():
    assert PAGES, "docs/ has no page with a ```python example"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_examples_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"{page.name}[block {number}]", "exec")
        exec(code, namespace)  # noqa: S102 - our own documentation, run as a test
