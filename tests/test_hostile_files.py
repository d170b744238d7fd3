"""Files that are not what they claim to be: every reader refuses a FIFO, a device or an oversized file with one
line, in bounded memory and time (the `tinygpt` command as a subprocess under a memory cap and a timeout)."""
import os
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_capped
from test_hostile_checkpoints import TINY, copy, tinygpt, trained  # noqa: F401 (the fixtures)


def hostile(workspace: Path, kind: str, name: str) -> Path:
    """A path named `name` that is a FIFO, or a symlink to /dev/zero or to a FIFO."""
    path = workspace / name
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        fifo = workspace / f"{name}.fifo"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        path.symlink_to(fifo)
    return path


KINDS = ["fifo", "zero", "link to fifo"]
EXPECTED = {"fifo": "FIFO", "zero": "character device", "link to fifo": "FIFO"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_config_file_that_is_not_a_regular_file_is_refused(workspace, kind):
    path = hostile(workspace, kind, "settings.json")
    result = tinygpt(workspace, "train", "--config", str(path), "--out-dir", "never", *TINY)
    assert_one_line_error(result, "settings.json", EXPECTED[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_file_that_is_not_a_regular_file_is_refused(workspace, trained, kind):
    path = hostile(workspace, kind, "prompt.txt")
    result = tinygpt(workspace, "sample", "--out-dir", str(trained), "--prompt", f"FILE:{path}", "--max-new-tokens", "2")
    assert_one_line_error(result, "prompt.txt", EXPECTED[kind])


def test_endless_stdin_of_tokenizer_encode_is_cut_off(workspace):
    result = tinygpt(workspace, "tokenizer", "train", "--data", "corpus.txt", "--vocab-size", "260", "--out", "tok")
    assert result.returncode == 0, result.stderr
    with open("/dev/zero", "rb") as endless:
        result = tinygpt(workspace, "tokenizer", "encode", "--model", "tok.model", stdin=endless)
    assert_one_line_error(result, "stdin", "bytes")


@pytest.mark.parametrize("name", ["config.json", "state.json", "tokenizer.model", "weights.safetensors"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_file_that_is_not_a_regular_file_is_refused(workspace, copy, name, kind):
    (copy / "ckpt" / name).unlink()
    hostile(copy / "ckpt", kind, name)
    result = tinygpt(workspace, "sample", "--out-dir", str(copy), "--max-new-tokens", "2")
    assert_one_line_error(result, name, EXPECTED[kind])


# ---- a corpus tokenised in bounded memory, whatever its line endings -----------------------------------

CORPUS_MEMORY_CAP = 500 << 20  # address space: imports and one block fit; 48 MB of text held whole does not
TOKENIZE = ("import sys; from tinygpt.dataset import tokenize_corpus; from tinygpt.tokenizer import BPETokenizer; "
            "print(len(tokenize_corpus(sys.argv[1], BPETokenizer(), cache_dir=sys.argv[2])))")


@pytest.fixture(scope="module")
def long_text(workspace) -> str:
    text = (workspace / "corpus.txt").read_text(encoding="utf-8")
    return (text * (48_000_000 // len(text) + 1))[:48_000_000]


@pytest.mark.parametrize("line_end", ["\n", "\r\n", " "], ids=["LF", "CRLF", "one line"])
def test_a_corpus_is_tokenised_in_bounded_memory_whatever_its_line_endings(workspace, long_text, line_end):
    path = workspace / "long.txt"
    path.write_bytes(long_text.replace("\n", line_end).encode("utf-8"))
    result = run_capped([sys.executable, "-c", TOKENIZE, str(path), str(workspace / f"cache-{len(line_end)}")],
                        memory=CORPUS_MEMORY_CAP, timeout=300)
    path.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) == len(long_text.replace("\n", line_end).encode("utf-8"))


# ---- the library's readers ---------------------------------------------------------------------------

LOAD_TOKENIZER = ("import sys; from tinygpt.tokenizer import BPETokenizer\n"
                  "try:\n    BPETokenizer().load(sys.argv[1])\nexcept ValueError as error:\n    print(error)")


@pytest.mark.parametrize("kind", KINDS)
def test_bpe_tokenizer_load_refuses_a_file_that_is_not_a_regular_file(workspace, kind):
    path = hostile(workspace, kind, "hostile.model")
    result = run_capped([sys.executable, "-c", LOAD_TOKENIZER, str(path)], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hostile.model" in result.stdout and EXPECTED[kind] in result.stdout


# ---- JSON nested deeper than the parser can follow ------------------------------------------------------

DEEP_JSON = "[" * 200_000  # a RecursionError in json.loads, were it not caught


@pytest.mark.parametrize("suffix, text", [(".json", DEEP_JSON), (".toml", "a = " + DEEP_JSON)])
def test_a_config_file_nested_too_deeply_is_one_line(workspace, suffix, text):
    (workspace / f"deep{suffix}").write_text(text)
    result = tinygpt(workspace, "train", "--config", f"deep{suffix}", "--out-dir", "never", *TINY)
    assert_one_line_error(result, f"deep{suffix}")


@pytest.mark.parametrize("name", ["config.json", "state.json"])
def test_a_checkpoint_file_nested_too_deeply_is_one_line(workspace, copy, name):
    (copy / "ckpt" / name).write_text(DEEP_JSON)
    result = tinygpt(workspace, "sample", "--out-dir", str(copy), "--max-new-tokens", "2")
    assert_one_line_error(result, name)


def test_a_metrics_line_nested_too_deeply_is_one_line(workspace, copy):
    lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text(DEEP_JSON + "\n" + "".join(lines[1:]))
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), "--resume", "--max-iters", "6")
    assert_one_line_error(result, "metrics.jsonl", "line 1")


def test_reading_a_small_file_allocates_for_the_file_not_for_the_bound(tmp_path):
    from tinygpt.files import read_bytes

    small = tmp_path / "small.txt"
    small.write_bytes(b"a few bytes")
    assert read_bytes(small, "test file", 1 << 50) == b"a few bytes"  # a buffer of the bound would not fit in memory
    with pytest.raises(ValueError, match="is 11 bytes, more than the 4"):
        read_bytes(small, "test file", 4)


def test_running_out_of_memory_is_one_line_with_advice(tmp_path):
    # a tokenizer is trained on the whole corpus in memory: 400 MB of text cannot be, under a 500 MiB cap
    corpus = tmp_path / "large.txt"
    line = b"To be, or not to be, that is the question.\n"
    with open(corpus, "wb") as file:
        for _ in range(400 * 2**20 // (len(line) * 4096)):
            file.write(line * 4096)
    result = run_capped(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out",
                         str(tmp_path / "tok")], timeout=120, cwd=tmp_path)
    assert_one_line_error(result, "out of memory")
