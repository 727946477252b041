"""Every ```python block in docs/*.md runs, and what it prints is what the page says.

Blocks of one page run in order in one namespace (a page may build on its earlier
blocks), inside a temporary working directory so examples that write files write there.

A ``print(...)`` line that ends with ``# -> EXPECTED`` (or ``# why -> EXPECTED``) is checked: the first line it
printed must match ``EXPECTED``; text must be equal (up to spacing) and every number
close (relative 5%, absolute 0.01: the examples are seeded, but float sums may differ
in the last digits across machines and BLAS builds).
"""

from __future__ import annotations

import builtins
import io
import math
import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_EXPECTED = re.compile(r"^.*\bprint\(.*#[^#]*?->\s*(.+?)\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def python_blocks(page: Path) -> list[str]:
    """The fenced ```python blocks of one markdown page, in order."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def expectations(block: str) -> dict[int, str]:
    """``{line number (1-based): expected output}`` of the block's ``# -> `` print lines."""
    return {n: m.group(1) for n, line in enumerate(block.splitlines(), start=1)
            if (m := _EXPECTED.match(line))}


def output_matches(printed: str, expected: str, rel: float = 0.05, abs_tol: float = 0.01) -> bool:
    """Whether ``printed`` equals ``expected`` with numbers compared approximately."""
    squash = lambda text: " ".join(_NUMBER.sub("#", text).split())  # noqa: E731
    if squash(printed) != squash(expected):
        return False
    got, want = _NUMBER.findall(printed), _NUMBER.findall(expected)
    return all(math.isclose(float(g), float(w), rel_tol=rel, abs_tol=abs_tol) for g, w in zip(got, want, strict=True))


PAGES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p))


def test_docs_have_runnable_examples():
    assert PAGES, "docs/ has no page with a ```python example"


def test_output_matching_compares_text_exactly_and_numbers_approximately():
    assert output_matches("auc 0.7012, 3 epochs", "auc 0.70, 3 epochs")
    assert not output_matches("auc 0.9, 3 epochs", "auc 0.70, 3 epochs")
    assert not output_matches("loss 0.70, 3 epochs", "auc 0.70, 3 epochs")
    assert expectations("x = 1\nprint(x)  # -> 1\nprint(2)\n") == {2: "1"}


def test_pages_check_what_they_print():
    checked = [p.name for p in PAGES if any(expectations(b) for b in python_blocks(p))]
    assert len(checked) >= len(PAGES) // 2, f"only {checked} assert their printed results"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_examples_run_and_print_what_the_page_says(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed: dict[tuple[str, int], str] = {}

    def recording_print(*args, **kwargs):
        frame = sys._getframe(1)
        if kwargs.get("file") is None:
            buffer = io.StringIO()
            builtins.print(*args, **{**kwargs, "file": buffer})
            printed.setdefault((frame.f_code.co_filename, frame.f_lineno), buffer.getvalue().split("\n")[0])
        builtins.print(*args, **kwargs)

    namespace: dict = {"__name__": f"docs_{page.stem}", "print": recording_print}
    for number, block in enumerate(python_blocks(page), start=1):
        name = f"{page.name}[block {number}]"
        exec(compile(block, name, "exec"), namespace)  # noqa: S102 - our own documentation, run as a test
        for line, expected in expectations(block).items():
            assert (name, line) in printed, f"{name}, line {line}: expected output {expected!r}, printed nothing"
            assert output_matches(printed[(name, line)], expected), (
                f"{name}, line {line}: printed {printed[(name, line)]!r}, the page says {expected!r}")
