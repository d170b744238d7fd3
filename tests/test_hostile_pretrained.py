"""--init-from a crafted Hugging Face GPT-2 directory: validated like our own checkpoints (types and sizes first, the
positions inside the parameter bound), every error one line naming the file, bad weights refused as bad input."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_capped
from test_hostile_checkpoints import (TINY, fresh_copy, safetensors_header, tinygpt, trained,  # noqa: F401
                                      write_safetensors)


@pytest.fixture(scope="module")
def exported(workspace, trained) -> Path:
    result = tinygpt(workspace, "export", "--out-dir", str(trained), "--to", "hf")
    assert result.returncode == 0, result.stderr
    return workspace / "hf"


@pytest.fixture
def hf_copy(workspace, exported, request) -> Path:
    return fresh_copy(exported, workspace, request, "hf")


def init_from(workspace, directory):
    return tinygpt(workspace, "train", "--data", "corpus.txt", "--init-from", str(directory), "--out-dir",
                   f"from-{directory.name}", *TINY, "--max-iters", "2", "--overwrite")


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, fragment", [
    ({"n_positions": 10**9}, "max_seq_length"),
    ({"n_layer": "twelve"}, "num_layers"),
    ({"n_embd": 10**6}, "config.json"),
    ({"layer_norm_epsilon": -1e-5}, "layer_norm_epsilon"),
    ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
    ({"layer_norm_epsilon": "small"}, "layer_norm_epsilon"),
])
def test_a_crafted_config_is_refused_before_anything_is_allocated(workspace, hf_copy, changes, fragment):
    edit_config(hf_copy, **changes)
    assert_one_line_error(init_from(workspace, hf_copy), str(hf_copy), "config.json", fragment)


def test_nan_weights_are_refused_as_bad_input_not_as_a_divergence(workspace, hf_copy):
    path = hf_copy / "model.safetensors"
    header, body = safetensors_header(path)
    name = next(key for key in header if key.endswith("wte.weight"))
    start, _ = header[name]["data_offsets"]
    write_safetensors(path, header, body[:start] + np.float32(np.nan).tobytes() + body[start + 4:])
    result = init_from(workspace, hf_copy)
    assert_one_line_error(result, "model.safetensors", "non-finite")
    assert "learning rate" not in result.stderr


def test_a_config_json_that_is_a_fifo_is_refused(workspace, hf_copy):
    (hf_copy / "config.json").unlink()
    os.mkfifo(hf_copy / "config.json")
    assert_one_line_error(init_from(workspace, hf_copy), "config.json", "FIFO")


# ---- the tokenizer files of a Hugging Face directory -------------------------------------------------------

MERGES = 44  # the learnt tokenizer's merges: ids up to 299, beyond the model's 256 (what the control expects)


@pytest.fixture(scope="module")
def tokenizer_files(workspace) -> Path:
    """tokenizer.json, vocab.json and merges.txt of a byte-level BPE with GPT-2's pattern and 44 merges."""
    from tinygpt.tokenizer import BPETokenizer, save_gpt2_tokenizer
    from tinygpt.tokenizer.patterns import RegexPatterns

    tokenizer = BPETokenizer(RegexPatterns.GPT2)
    tokenizer.train((workspace / "corpus.txt").read_text(), 256 + MERGES)
    save_gpt2_tokenizer(tokenizer, workspace / "tokenizer-files")
    return workspace / "tokenizer-files"


@pytest.fixture(params=["tokenizer.json", "vocab.json"])
def hf_tokenized(request, hf_copy, tokenizer_files) -> Path:
    """A copy of the exported directory with tokenizer_files: tokenizer.json only, or vocab.json + merges.txt only."""
    names = ["tokenizer.json"] if request.param == "tokenizer.json" else ["vocab.json", "merges.txt"]
    (hf_copy / "tokenizer.json").unlink(missing_ok=True)
    for name in names:
        shutil.copy(tokenizer_files / name, hf_copy / name)
    return hf_copy


def assert_refused_naming(result, name: str, *fragments: str) -> None:
    assert_one_line_error(result, name, *fragments)
    assert not any(word in result.stderr for word in ("TypeError", "KeyError", "AttributeError", "IndexError"))


def assert_loader_refuses_naming(directory: Path, name: str, *fragments: str) -> None:
    """load_pretrained (what --init-from calls) refuses the directory with a ConfigError, which the command prints
    as its one line (as the cases run through the command above show); any other exception fails the test."""
    from tinygpt.config import ConfigError
    from tinygpt.pretrained import load_pretrained

    with pytest.raises(ConfigError) as refused:
        load_pretrained(directory)
    for fragment in (name, *fragments):
        assert fragment in str(refused.value), str(refused.value)


def test_the_tokenizer_files_as_written_are_read(workspace, hf_tokenized):
    assert_one_line_error(init_from(workspace, hf_tokenized), "vocab_size 256")  # read in full, then found too large


def edit_tokenizer_json(directory: Path, edit) -> None:
    record = json.loads((directory / "tokenizer.json").read_text())
    (directory / "tokenizer.json").write_text(json.dumps(edit(record)))


def first_merge_of_merged_tokens(merges: list) -> list:
    """The merges with the first one whose both parts are merged tokens moved to the front (where they are unknown)."""
    index = next(i for i, merge in enumerate(merges) if all(len(part) > 1 for part in merge.split(" ")))
    return [merges[index], *merges[:index], *merges[index + 1:]]


def model_edit(key, value):
    def edit(record):
        record["model"][key] = value(record["model"][key]) if callable(value) else value
        return record
    return edit


def first_vocab_id(value):
    def edit(record):
        record["model"]["vocab"][next(iter(record["model"]["vocab"]))] = value
        return record
    return edit


def first_merge(value):
    return model_edit("merges", lambda merges: [value, *merges[1:]])


TOKENIZER_JSON_DAMAGE = {
    "a list": lambda record: [record],
    "no model": lambda record: {key: value for key, value in record.items() if key != "model"},
    "model a string": lambda record: {**record, "model": "BPE"},
    "vocab a list": model_edit("vocab", lambda vocab: list(vocab)),
    "an id a string": first_vocab_id("7"),
    "an id negative": first_vocab_id(-1),
    "an id a float": first_vocab_id(1.5),
    "an id twice": first_vocab_id(1),
    "merges a string": model_edit("merges", "a b"),
    "a merge a number": first_merge(7),
    "a merge of one part": first_merge("ab"),
    "a merge of three parts": first_merge("a b c"),
    "a merge a list of three": first_merge(["a", "b", "c"]),
    "a merge of unknown tokens": model_edit("merges", first_merge_of_merged_tokens),
    "added tokens a dict": lambda record: {**record, "added_tokens": {"<|x|>": 300}},
    "an added token without content": lambda record: {**record, "added_tokens": [{"id": 300, "special": True}]},
    "an added token id a string": lambda record: {**record, "added_tokens": [{"id": "300", "content": "<|x|>"}]},
    "pre_tokenizer a string": lambda record: {**record, "pre_tokenizer": "ByteLevel"},
    "pretokenizers a dict": lambda record: {**record, "pre_tokenizer": {"type": "Sequence", "pretokenizers": {}}},
    "split pattern a number": lambda record: {**record, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": 5}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}},
}


@pytest.mark.parametrize("damage", TOKENIZER_JSON_DAMAGE)
def test_a_malformed_tokenizer_json_is_one_line_naming_it(workspace, hf_copy, tokenizer_files, damage):
    shutil.copy(tokenizer_files / "tokenizer.json", hf_copy / "tokenizer.json")
    edit_tokenizer_json(hf_copy, TOKENIZER_JSON_DAMAGE[damage])
    assert_loader_refuses_naming(hf_copy, "tokenizer.json")


def vocab_and_merges(directory: Path, tokenizer_files: Path, vocab=None, merges=None) -> None:
    (directory / "tokenizer.json").unlink(missing_ok=True)
    shutil.copy(tokenizer_files / "vocab.json", directory / "vocab.json")
    shutil.copy(tokenizer_files / "merges.txt", directory / "merges.txt")
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab(json.loads((directory / "vocab.json").read_text()))))
    if merges is not None:
        lines = (directory / "merges.txt").read_text().splitlines()
        (directory / "merges.txt").write_text("\n".join(merges(lines)) + "\n")


@pytest.mark.parametrize("vocab, fragment", [
    (lambda vocab: list(vocab), "object"),
    (lambda vocab: {**vocab, next(iter(vocab)): "7"}, "id"),
    (lambda vocab: {**vocab, next(iter(vocab)): 10**30}, "id"),
    (lambda vocab: 42, "object"),
], ids=["a list", "an id a string", "an id too large", "a number"])
def test_a_malformed_vocab_json_is_one_line_naming_it(workspace, hf_copy, tokenizer_files, vocab, fragment):
    vocab_and_merges(hf_copy, tokenizer_files, vocab=vocab)
    assert_loader_refuses_naming(hf_copy, "vocab.json", fragment)


@pytest.mark.parametrize("line", ["ab", "a b c", "a  b", "\u4e00 b"], ids=["one part", "three parts", "empty part",
                                                                           "not a GPT-2 byte"])
def test_a_malformed_merges_line_is_one_line_naming_it(workspace, hf_copy, tokenizer_files, line):
    vocab_and_merges(hf_copy, tokenizer_files, merges=lambda lines: [lines[0], lines[1], line, *lines[3:]])
    assert_loader_refuses_naming(hf_copy, "merges.txt", "line 3")


def test_merges_are_checked_as_they_are_read(workspace, hf_copy, tokenizer_files):
    """A merge of tokens not yet built on line 2 is found there, before a later line whose character is not a GPT-2
    byte, and before 3 million more lines are converted."""
    def damage(lines):
        unknown = first_merge_of_merged_tokens(lines[1:])[0]
        return [lines[0], unknown, *lines[1:4], "\u4e00 b", *["a b"] * 3_000_000]
    vocab_and_merges(hf_copy, tokenizer_files, merges=damage)
    result = run_capped(["train", "--data", "corpus.txt", "--init-from", str(hf_copy), "--out-dir", "never", *TINY,
                         "--max-iters", "2"], cwd=workspace, timeout=60,
                        env=os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")})
    assert_refused_naming(result, "merges.txt", "line 2")


def test_a_tokenizer_json_that_is_a_fifo_is_refused(workspace, hf_copy):
    (hf_copy / "tokenizer.json").unlink()
    os.mkfifo(hf_copy / "tokenizer.json")
    assert_refused_naming(init_from(workspace, hf_copy), "tokenizer.json", "FIFO")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_json_file_nested_too_deeply_is_one_line(workspace, hf_copy, name):
    (hf_copy / name).write_text("[" * 200_000)
    assert_refused_naming(init_from(workspace, hf_copy), name)
