"""Every docs/*.md page and the README: its ```python blocks run, in order, as one program in a fresh namespace.

Pages are found by glob, so a new page is tested as soon as it exists. Each runs twice in a working directory
of its own: an empty one, and one as the README's first command (`tinygpt train`) leaves it, with a checkpoint
in `out/`, so that no example fails for a reader who ran that command first.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import tinygpt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fenced block of the page."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in PYTHON_BLOCK.finditer(text)]


def test_the_docs_pages_are_found():
    assert {"buffer.md", "operation.md", "tensor.md", "gradientfunction.md"} <= {page.name for page in PAGES}


def test_the_migration_page_is_linked_from_the_readme_and_getting_started():
    assert (DOCS / "coming-from-tinygpt-0.md").is_file()
    assert "(docs/coming-from-tinygpt-0.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(coming-from-tinygpt-0.md)" in (DOCS / "getting-started.md").read_text(encoding="utf-8")


def test_python_blocks_are_extracted_in_order(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```python\nx = 1\n```\n\ntext\n\n```\nnot python\n```\n\n```python\ny = x + 1\n```\n")
    assert python_blocks(page) == [(4, "x = 1\n"), (14, "y = x + 1\n")]


@pytest.fixture(scope="module")
def first_command_out(tmp_path_factory) -> Path:
    """An out/ as `tinygpt train` leaves it (a checkpoint, metrics.jsonl, loss.png), of a small model."""
    from tinygpt.train import TrainConfig, train

    out = tmp_path_factory.mktemp("first-command") / "out"
    settings = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, max_iters=2, eval_interval=2, eval_iters=1,
                    sample_tokens=0, out_dir=str(out))
    train(TrainConfig.from_settings(settings), verbose=False)
    return out


@pytest.mark.parametrize("after_first_command", [False, True], ids=["empty folder", "after tinygpt train"])
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_docs_page_examples_run(page, after_first_command, tmp_path, monkeypatch, request):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python example")
    if after_first_command:
        shutil.copytree(request.getfixturevalue("first_command_out"), tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGPT_CACHE_DIR", str(tmp_path / "token-cache"))
    tinygpt.manual_seed(0)
    namespace = {"__name__": f"docs_{page.stem}"}
    for line, code in blocks:
        padded = "\n" * (line - 1) + code  # so that a traceback points at the page's own line numbers
        exec(compile(padded, str(page), "exec"), namespace)  # noqa: S102 - the docs are ours
