"""BPETokenizer on hostile input: crafted .model files, pathological vocabularies, wrong argument types.

Commands run as subprocesses under a memory cap and a timeout (conftest.run_capped): a crafted file must
end in one clear line, in bounded memory and time.
"""
import json
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_capped
from tinygpt.tokenizer import MAX_TOKEN_ID, MAX_VOCAB_BYTES, BPETokenizer, RegexPatterns
from tinygpt.tokenizer.checks import MAX_PATTERN_CHARACTERS

pytestmark = pytest.mark.usefixtures("compiled_tokenizer_loops")  # encodes are timed below

CATASTROPHIC_PATTERN = r"(?:a|a)+$|\s|."


def write_model(path: Path, merges: list[tuple[int, int]], pattern: str = RegexPatterns.GPT4,
                special_tokens: dict[str, int] | None = None) -> Path:
    """A .model file in the format `save` writes, with whatever merges and pattern are given."""
    special_tokens = special_tokens or {}
    lines = ["tinygpt-bpe v1", json.dumps(pattern), f"special_tokens {len(special_tokens)}"]
    lines += [f"{json.dumps(token)} {index}" for token, index in special_tokens.items()]
    lines += [f"merges {len(merges)}", *(f"{first} {second}" for first, second in merges)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_original_model(path: Path, merges: list[tuple[int, int]], pattern: str = RegexPatterns.GPT4,
                         special_tokens: dict[str, int] | None = None) -> Path:
    """A .model file in the original TinyGPT's layout: repr(pattern), the special tokens, the merges."""
    special_tokens = special_tokens or {}
    lines = [repr(pattern), str(len(special_tokens)), *(f"{token} {index}" for token, index in special_tokens.items())]
    lines += [f"{first} {second}" for first, second in merges]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MODEL_WRITERS = {"tinygpt": write_model, "original": write_original_model}


def doubling_merges(count: int) -> list[tuple[int, int]]:
    """`97 97`, `256 256`, `257 257`, ...: merge i is the token of 2**(i + 1) letters `a`."""
    return [(97, 97)] + [(255 + index, 255 + index) for index in range(1, count)]


def merge_by_merge(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """minbpe's encode: while some adjacent pair is a merge, merge every occurrence of the lowest-ranked one."""
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda pair: merges.get(pair, float("inf")))
        if pair not in merges:
            return ids
        merged, position = [], 0
        while position < len(ids):
            if tuple(ids[position:position + 2]) == pair:
                merged.append(merges[pair])
                position += 2
            else:
                merged.append(ids[position])
                position += 1
        ids = merged
    return ids


@pytest.fixture(scope="module")
def doubling_model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("doubling") / "doubling.model", doubling_merges(24))


# ---- vocabularies of very long tokens -------------------------------------------------------------

def test_the_24_merge_doubling_model_encodes_2000_characters_quickly(doubling_model):
    tokenizer = BPETokenizer()
    tokenizer.load(doubling_model)
    text = "a" * 2000
    started = time.perf_counter()
    ids = tokenizer.encode(text)
    assert time.perf_counter() - started < 5
    assert ids == merge_by_merge(list(text.encode()), tokenizer.merges)
    assert tokenizer.decode(ids) == text


def test_the_doubling_model_encodes_many_distinct_chunks_like_merge_by_merge(doubling_model):
    tokenizer = BPETokenizer()
    tokenizer.load(doubling_model)
    words = [" " + "a" * length + "b" for length in range(1, 200)]  # 199 distinct chunks: the batched path
    started = time.perf_counter()
    ids = tokenizer.encode("".join(words))
    assert time.perf_counter() - started < 5
    assert ids == [index for word in words for index in merge_by_merge(list(word.encode()), tokenizer.merges)]


def test_the_encode_command_on_the_doubling_model_is_bounded(doubling_model):
    result = run_capped(["tokenizer", "encode", "--model", str(doubling_model), "--text", "a" * 2000 + " b" * 100],
                        timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:6] == ["265", "264", "263", "262", "261", "259"]  # 1024+512+256+128+64+16


def test_a_40_merge_doubling_model_is_refused_naming_the_bound(tmp_path):
    model = write_model(tmp_path / "huge.model", doubling_merges(40))
    result = run_capped(["tokenizer", "encode", "--model", str(model), "--text", "aaaa"], timeout=60)
    assert_one_line_error(result, "huge.model", f"{MAX_VOCAB_BYTES:,} bytes")


def test_a_tokenizer_trained_on_an_abab_line_saves_and_encodes_quickly(tmp_path):
    tokenizer = BPETokenizer()
    tokenizer.train("ab" * (1 << 16), 300)  # tokens of up to 2**17 bytes
    assert max(map(len, tokenizer.vocab.values())) == 1 << 17
    started = time.perf_counter()
    tokenizer.save(tmp_path / "abab")
    assert time.perf_counter() - started < 5
    vocab_bytes = sum(map(len, tokenizer.vocab.values()))
    assert (tmp_path / "abab.vocab").stat().st_size < 4 * vocab_bytes
    loaded = BPETokenizer()
    loaded.load(tmp_path / "abab.model")
    text = "ab" * 1000
    started = time.perf_counter()
    ids = loaded.encode(text)
    assert time.perf_counter() - started < 5
    assert ids == merge_by_merge(list(text.encode()), loaded.merges) and loaded.decode(ids) == text


def test_training_stops_before_the_vocabulary_outgrows_its_bound(monkeypatch):
    monkeypatch.setattr("tinygpt.tokenizer.tokenizer.MAX_VOCAB_BYTES", 256 + 2 + 4 + 8)
    tokenizer = BPETokenizer()
    tokenizer.train("a" * 64, 300)
    assert sorted(map(len, tokenizer.vocab.values()))[-3:] == [2, 4, 8]


# ---- ids out of range ------------------------------------------------------------------------------

def test_a_special_token_id_beyond_the_bound_is_refused(tmp_path):
    model = write_model(tmp_path / "special.model", [(97, 98)], special_tokens={"<|end|>": 10**18})
    with pytest.raises(ValueError, match=f"special.model.*at most {MAX_TOKEN_ID:,}"):
        BPETokenizer().load(model)
    with pytest.raises(ValueError, match=f"at most {MAX_TOKEN_ID:,}"):
        BPETokenizer().register_special_tokens({"<|end|>": 10**18})


def test_a_merge_count_beyond_the_bound_is_refused_before_reading_the_merges(tmp_path):
    model = tmp_path / "count.model"
    model.write_text(f'tinygpt-bpe v1\n{json.dumps(RegexPatterns.GPT4)}\nspecial_tokens 0\nmerges {10**12}\n97 98\n')
    with pytest.raises(ValueError, match="count.model.*1,000,000,000,000 merges"):
        BPETokenizer().load(model)


def test_train_refuses_a_vocab_size_beyond_the_bound():
    with pytest.raises(ValueError, match=f"at most {MAX_TOKEN_ID + 1:,}"):
        BPETokenizer().train("some text", 10**12)


# ---- the stored regex ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(MODEL_WRITERS))
def test_a_catastrophic_backtracking_pattern_times_out_with_one_line(tmp_path, layout):
    model = MODEL_WRITERS[layout](tmp_path / "slow.model", [(97, 97)], pattern=CATASTROPHIC_PATTERN)
    started = time.perf_counter()
    result = run_capped(["tokenizer", "encode", "--model", str(model), "--text", "a" * 60 + "!"], timeout=60)
    assert_one_line_error(result, "pattern", "timed out")
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("layout", sorted(MODEL_WRITERS))
def test_a_pattern_that_backtracks_on_the_probe_text_is_refused_at_load_with_one_line(tmp_path, layout):
    model = MODEL_WRITERS[layout](tmp_path / "probe.model", [(97, 97)], pattern=r"(?:[\s\S]|[\s\S])+~|.")
    started = time.perf_counter()
    result = run_capped(["tokenizer", "encode", "--model", str(model), "--text", "a"], timeout=60)
    assert_one_line_error(result, "probe.model", "timed out on a 50-character probe text")
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("layout", sorted(MODEL_WRITERS))
def test_a_pattern_beyond_the_length_bound_is_refused_before_it_is_compiled(tmp_path, layout):
    pattern = "(?:" + r"\w" * 200_000 + r")|\s|."  # 400 kB here, 230 MB once `re`'s \w is spelt out for `regex`
    model = MODEL_WRITERS[layout](tmp_path / "long.model", [(97, 97)], pattern=pattern)
    started = time.perf_counter()
    result = run_capped(["tokenizer", "encode", "--model", str(model), "--text", "a"], timeout=60)
    assert_one_line_error(result, "long.model", f"more than the bound of {MAX_PATTERN_CHARACTERS:,}")
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("layout", sorted(MODEL_WRITERS))
@pytest.mark.parametrize("pattern, message", [
    (r"(\w+)|\s", "capture group"),
    ("", "empty string"),
    (r"a*", "empty string"),
    (r"\b|\w+|\s|.", "empty string"),
])
def test_a_pattern_with_capture_groups_or_empty_matches_is_refused(tmp_path, layout, pattern, message):
    model = MODEL_WRITERS[layout](tmp_path / "pattern.model", [(97, 98)], pattern=pattern)
    with pytest.raises(ValueError, match=f"pattern.model.*{message}"):
        BPETokenizer().load(model)
    with pytest.raises(ValueError, match=message):
        BPETokenizer(pattern)


def test_a_pattern_that_skips_characters_is_refused_at_encode():
    tokenizer = BPETokenizer(r"[a-z]+")
    tokenizer.merges = {(104, 101): 256}
    with pytest.raises(ValueError, match="does not match every character"):
        tokenizer.encode("hello, world")


# ---- arguments of the wrong type -------------------------------------------------------------------

def test_encode_refuses_bytes_and_decode_refuses_nested_ids():
    tokenizer = BPETokenizer()
    with pytest.raises(TypeError, match="encode needs a str.*bytes"):
        tokenizer.encode(b"abc")
    with pytest.raises(TypeError, match="decode needs a 1-D sequence of int ids.*list"):
        tokenizer.decode([[72]])
    assert tokenizer.decode([72, 105]) == "Hi"
