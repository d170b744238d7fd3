"""BPETokenizer: training, encoding parity with tiktoken, special tokens, save/load, batching."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.dataset import default_corpus_path
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import SPLIT_PATTERNS, BPETokenizer, RegexPatterns, get_stats, merge
from tinygpt.tokenizer.bpe import encode_chunk
from tinygpt.tokenizer.fast import MergeTable

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is the oracle for encoding")

PATTERNS = {name: known.pattern for name, known in SPLIT_PATTERNS.items()}

MULTILINGUAL_TEXT = "".join([
    "Hello, world! Ça va? naïve café résumé Ångström ÉCOLE\r\n",
    "Привет, мир! Γειά σου κόσμε. שלום עולם مرحبا بالعالم\n",
    "你好，世界！こんにちは世界 안녕하세요 세계\t\ttabs\tand\ttabs\n",
    "emoji: 😀🎉 👩‍👩‍👧‍👦 🇫🇷 flags, zero\u200dwidth joiner, combining e\u0301 and a\u0308\n",
    "digits 1234567890 ١٢٣٤٥ ⅫⅣ 3.14159 1,000,000 and 42nd\n",
    "   runs of    spaces   \n\n\n  trailing spaces  \r\n\r\n",
    "it's they're we've I'M YOU'LL he'd 'quoted' \"double\"\n",
    "code: def f(x):\n    return x**2  # comment\n\tindented()\n",
    "mixed\u00a0non-breaking\u3000ideographic space\u2028line separator\n",
])


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return default_corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def trained(request, shakespeare) -> BPETokenizer:
    """A tokenizer per pattern trained on Tiny Shakespeare at vocab 512."""
    tokenizer = BPETokenizer(PATTERNS[request.param])
    tokenizer.train(shakespeare, 512)
    return tokenizer


def tiktoken_oracle(tokenizer: BPETokenizer, special_tokens=None) -> "tiktoken.Encoding":
    num_tokens = 256 + len(tokenizer.merges)
    return tiktoken.Encoding(
        name="tinygpt-test", pat_str=tokenizer.pattern,
        mergeable_ranks={tokenizer.vocab[index]: index for index in range(num_tokens)},
        special_tokens=special_tokens or {})


def reference_train(text: str, vocab_size: int, pattern: str) -> dict[tuple[int, int], int]:
    """minbpe-style training that recounts every pair before each merge, with our tie rule."""
    chunk_counts = Counter(BPETokenizer(pattern).split_into_chunks(text))
    words = [(list(chunk.encode("utf-8")), count) for chunk, count in chunk_counts.items()]
    merges = {}
    while len(merges) < vocab_size - 256:
        pair_counts = Counter()
        for ids, count in words:
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        new_id = 256 + len(merges)
        merges[best] = new_id
        words = [(merge(ids, best, new_id), count) for ids, count in words]
    return merges


# ---- the patterns --------------------------------------------------------------------------------

def test_patterns_are_tiktokens_gpt2_and_cl100k_patterns(monkeypatch):
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    assert RegexPatterns.GPT2 == openai_public.r50k_base()["pat_str"]  # the gpt2 encoding uses it too
    assert RegexPatterns.GPT4 == openai_public.cl100k_base()["pat_str"]


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
@settings(deadline=None, max_examples=300)
@given(text=st.one_of(st.text(alphabet=st.characters(max_codepoint=127)),
                     st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x00'sdmtlvreSDMTLVRE09aZ.,!-"))))
def test_the_ascii_splitter_splits_like_the_pattern(pattern_name, text):
    pattern = PATTERNS[pattern_name]
    assert SPLIT_PATTERNS[pattern_name].ascii_splitter.findall(text) == regex.findall(pattern, text)


def test_the_ascii_splitter_splits_tiny_shakespeare_like_the_pattern(shakespeare):
    for known in SPLIT_PATTERNS.values():
        assert known.ascii_splitter.findall(shakespeare) == regex.findall(known.pattern, shakespeare)


# ---- training ------------------------------------------------------------------------------------

def test_train_gives_ids_in_merge_order_and_vocab_as_bytes(trained):
    assert len(trained.merges) == 256
    assert sorted(trained.merges.values()) == list(range(256, 512))
    assert len(trained.vocab) == 512
    for (first, second), new_id in trained.merges.items():
        assert first < new_id and second < new_id
        assert trained.vocab[new_id] == trained.vocab[first] + trained.vocab[second]
    assert len(set(trained.vocab.values())) == len(trained.vocab)


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
def test_incremental_training_equals_recounting_every_pair(pattern_name, shakespeare):
    text = shakespeare[:20_000] + MULTILINGUAL_TEXT * 3
    tokenizer = BPETokenizer(PATTERNS[pattern_name])
    tokenizer.train(text, 400)
    assert tokenizer.merges == reference_train(text, 400, PATTERNS[pattern_name])


@settings(deadline=None, max_examples=60)
@given(text=st.text(alphabet=st.sampled_from("aab b c\n'sé😀"), min_size=1, max_size=300),
       pattern_name=st.sampled_from(sorted(PATTERNS)))
def test_incremental_training_equals_recounting_on_random_text(text, pattern_name):
    tokenizer = BPETokenizer(PATTERNS[pattern_name])
    tokenizer.train(text, 320)
    assert tokenizer.merges == reference_train(text, 320, PATTERNS[pattern_name])


def test_training_twice_gives_identical_merges(shakespeare):
    first, second = BPETokenizer(), BPETokenizer()
    first.train(shakespeare[:200_000], 600)
    second.train(shakespeare[:200_000], 600)
    assert list(first.merges.items()) == list(second.merges.items())


def test_ties_go_to_the_smallest_pair_of_ids():
    tokenizer = BPETokenizer()
    tokenizer.train("ab cd", 257)  # chunks "ab" and " cd": (97, 98), (32, 99), (99, 100) all once
    assert tokenizer.merges == {(32, 99): 256}


def test_overlapping_pairs_are_counted_and_merged_left_to_right():
    tokenizer = BPETokenizer()
    tokenizer.train("aaaaa aaa", 258)
    assert tokenizer.merges == reference_train("aaaaa aaa", 258, RegexPatterns.GPT4)
    assert tokenizer.encode("aaaaa") == tiktoken_oracle(tokenizer).encode_ordinary("aaaaa")


@pytest.mark.parametrize("text", ["ab ab ab", "abab", "aaaaaaa", "abcabcabc abab"])
def test_training_stops_when_no_pair_is_left(text):
    tokenizer = BPETokenizer()
    tokenizer.train(text, 1000)
    assert tokenizer.merges == reference_train(text, 1000, RegexPatterns.GPT4)
    assert len(tokenizer.vocab) < 1000
    assert tokenizer.encode(text) == tiktoken_oracle(tokenizer).encode_ordinary(text)


def test_vocab_256_learns_nothing_and_encodes_bytes():
    tokenizer = BPETokenizer()
    tokenizer.train("hello world", 256)
    assert tokenizer.merges == {}
    assert tokenizer.encode("héllo") == list("héllo".encode("utf-8"))


def test_train_rejects_an_empty_corpus():
    with pytest.raises(ValueError, match="empty corpus"):
        BPETokenizer().train("", 300)


@pytest.mark.parametrize("vocab_size", [0, 255, -1, 300.0])
def test_train_rejects_a_vocab_size_below_256(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 256"):
        BPETokenizer().train("some text", vocab_size)


def test_verbose_training_shows_progress(capsys):
    BPETokenizer().train("the cat sat on the mat " * 50, 600, verbose=True)
    captured = capsys.readouterr()
    assert "BPE merges" in captured.err
    assert "stopped after" in captured.out


# ---- encoding: parity with tiktoken --------------------------------------------------------------

def test_encode_equals_tiktoken_on_the_training_corpus(trained, shakespeare):
    assert trained.encode(shakespeare) == tiktoken_oracle(trained).encode_ordinary(shakespeare)


def test_encode_equals_tiktoken_on_multilingual_text(trained):
    assert trained.encode(MULTILINGUAL_TEXT) == tiktoken_oracle(trained).encode_ordinary(MULTILINGUAL_TEXT)


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
def test_encode_equals_tiktoken_when_trained_on_multilingual_text(pattern_name, shakespeare):
    tokenizer = BPETokenizer(PATTERNS[pattern_name])
    tokenizer.train(MULTILINGUAL_TEXT * 5 + shakespeare[:5000], 700)
    oracle = tiktoken_oracle(tokenizer)
    for text in (MULTILINGUAL_TEXT, shakespeare[:5000], MULTILINGUAL_TEXT[::-1]):
        assert tokenizer.encode(text) == oracle.encode_ordinary(text)


def test_encode_equals_tiktoken_at_vocab_1024(shakespeare):
    tokenizer = BPETokenizer(RegexPatterns.GPT4)
    tokenizer.train(shakespeare, 1024)
    oracle = tiktoken_oracle(tokenizer)
    assert tokenizer.encode(shakespeare) == oracle.encode_ordinary(shakespeare)
    assert tokenizer.encode(MULTILINGUAL_TEXT) == oracle.encode_ordinary(MULTILINGUAL_TEXT)


@settings(deadline=None, max_examples=150)
@given(text=st.text())
def test_encode_equals_tiktoken_on_arbitrary_text(trained, text):
    assert trained.encode(text) == tiktoken_oracle(trained).encode_ordinary(text)


@settings(deadline=None, max_examples=40)
@given(words=st.lists(st.text(min_size=1), min_size=80, max_size=150))
def test_encode_of_many_new_chunks_equals_tiktoken(trained, words):
    fresh = BPETokenizer(trained.pattern)  # an empty chunk cache: the vectorised path runs
    fresh.merges = trained.merges
    text = " ".join(words)
    assert fresh.encode(text) == tiktoken_oracle(trained).encode_ordinary(text)


def test_compiled_chunk_encoding_equals_the_per_chunk_loop(trained, shakespeare):
    text = shakespeare[:50_000] + MULTILINGUAL_TEXT + "x" + " " * 100 + "y" + "ab" * 80
    chunks = sorted({chunk.encode("utf-8") for chunk in trained.split_into_chunks(text)})
    assert max(len(chunk) for chunk in chunks) > 64
    assert MergeTable(trained.merges).encode_chunks(chunks) == [encode_chunk(chunk, trained.merges) for chunk in chunks]


def test_long_chunks_encode_like_tiktoken(shakespeare):
    tokenizer = BPETokenizer()
    tokenizer.train(shakespeare[:20_000] + "   \n" * 500 + "ha" * 500, 400)
    oracle = tiktoken_oracle(tokenizer)
    for text in (" " * 30_000 + "x", "ha" * 20_000, "x" + "\n" * 10_000):
        assert tokenizer.encode(text) == oracle.encode_ordinary(text)


def test_encode_with_a_warm_cache_gives_the_same_ids(trained):
    text = "To be, or not to be: that is the question."
    assert trained.encode(text) == trained.encode(text) == tiktoken_oracle(trained).encode_ordinary(text)


# ---- decoding ------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=200)
@given(text=st.text())
def test_decode_inverts_encode(trained, text):
    assert trained.decode(trained.encode(text)) == text


@given(data=st.binary(max_size=40))
def test_decode_replaces_invalid_utf8_and_never_raises_on_it(data):
    assert BPETokenizer().decode(list(data)) == data.decode("utf-8", errors="replace")


def test_decode_of_an_id_outside_the_vocabulary_raises(trained):
    assert trained.decode(np.array([104, 105])) == "hi"
    for unknown in (len(trained.vocab), 10**9, -1):
        with pytest.raises(ValueError, match=f"id {unknown} is not in the vocabulary"):
            trained.decode([104, unknown, 105])


# ---- special tokens ------------------------------------------------------------------------------

@pytest.fixture
def with_specials(trained) -> BPETokenizer:
    tokenizer = BPETokenizer(trained.pattern)
    tokenizer.merges = trained.merges
    tokenizer.register_special_tokens({"<|endoftext|>": 600, "<|pad|>": 601})
    return tokenizer


def test_special_tokens_round_trip_and_match_tiktoken(with_specials):
    text = "Hello<|endoftext|>world <|pad|><|pad|>"
    ids = with_specials.encode(text, allowed_special="all")
    assert ids.count(600) == 1 and ids.count(601) == 2
    assert with_specials.decode(ids) == text
    oracle = tiktoken_oracle(with_specials, with_specials.special_tokens)
    assert ids == oracle.encode(text, allowed_special="all")


def test_none_raise_names_the_special_token_found(with_specials):
    with pytest.raises(ValueError, match=r"special token '<\|pad\|>'"):
        with_specials.encode("text <|pad|> text")


def test_none_encodes_special_tokens_as_ordinary_text(with_specials):
    text = "a <|endoftext|> b"
    assert with_specials.encode(text, allowed_special="none") == with_specials.encode_ordinary(text)
    assert 600 not in with_specials.encode(text, allowed_special="none")


def test_a_set_allows_only_the_named_special_tokens(with_specials):
    ids = with_specials.encode("<|pad|><|endoftext|>", allowed_special={"<|pad|>"})
    assert ids[0] == 601 and 600 not in ids
    with pytest.raises(ValueError, match="unregistered special tokens"):
        with_specials.encode("x", allowed_special={"<|unknown|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        with_specials.encode("x", allowed_special="some")


def test_special_token_ids_must_not_overlap_the_vocabulary(trained):
    tokenizer = BPETokenizer(trained.pattern)
    tokenizer.merges = trained.merges
    tokenizer.register_special_tokens({"<|a|>": 600})
    with pytest.raises(ValueError, match="needs an id >= 512"):
        tokenizer.register_special_tokens({"<|b|>": 300})
    with pytest.raises(ValueError, match="distinct ids"):
        tokenizer.register_special_tokens({"<|b|>": 601, "<|c|>": 601})
    with pytest.raises(ValueError, match="below vocab_size 1000"):
        tokenizer.train("some text", 1000)


def test_register_special_tokens_replaces_the_registered_specials(with_specials):
    with_specials.register_special_tokens({"<|sep|>": 600})
    assert with_specials.special_tokens == {"<|sep|>": 600}
    assert with_specials.vocab[600] == b"<|sep|>" and 601 not in with_specials.vocab
    text = "a<|sep|>b<|pad|>"
    assert with_specials.encode(text, allowed_special="all") == tiktoken_oracle(
        with_specials, {"<|sep|>": 600}).encode(text, allowed_special="all")


# ---- saving and loading --------------------------------------------------------------------------

def test_save_then_load_gives_identical_encodings(with_specials, shakespeare, tmp_path):
    with_specials.save(tmp_path / "tok")
    assert (tmp_path / "tok.vocab").read_text(encoding="utf-8").count("\n") == len(with_specials.vocab)
    other_pattern = next(pattern for pattern in PATTERNS.values() if pattern != with_specials.pattern)
    loaded = BPETokenizer(other_pattern)  # load replaces the pattern too
    loaded.load(tmp_path / "tok.model")
    assert loaded.pattern == with_specials.pattern
    assert loaded.merges == with_specials.merges
    assert loaded.special_tokens == with_specials.special_tokens
    assert loaded.vocab == with_specials.vocab
    text = shakespeare[:5000] + MULTILINGUAL_TEXT + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == with_specials.encode(text, allowed_special="all")


def test_save_writes_plain_text_with_a_version_header(with_specials, tmp_path):
    with_specials.save(str(tmp_path / "tok"))
    lines = (tmp_path / "tok.model").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "tinygpt-bpe v1"
    assert lines[2] == "special_tokens 2"
    assert lines[5] == "merges 256"
    assert len(lines) == 6 + 256


def test_a_save_killed_halfway_leaves_the_previous_files_intact(with_specials, tmp_path, monkeypatch):
    BPETokenizer().save(tmp_path / "tok")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    write_text = Path.write_text

    def write_half_then_fail(path, text, *args, **kwargs):
        write_text(path, text[:len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        with_specials.save(tmp_path / "tok")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.fixture
def saved_model(with_specials, tmp_path):
    with_specials.save(tmp_path / "tok")
    return tmp_path / "tok.model"


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[: len(lines) // 2], "corrupt or truncated"),
    (lambda lines: lines[:-2] + [""], "expected 256 merge lines"),
    (lambda lines: lines + ["70000 3", ""], "corrupt or truncated"),
    (lambda lines: lines[:6] + ["97 x"] + lines[7:], "corrupt or truncated"),
    (lambda lines: lines[:2] + ["special_tokens 9"] + lines[3:], "corrupt or truncated"),
    (lambda lines: lines[:1] + ["not json"] + lines[2:], "corrupt or truncated"),
    (lambda lines: lines[:1] + ['"(unbalanced"'] + lines[2:], "corrupt or truncated"),
    (lambda lines: ["minbpe v1"] + lines[1:], "not a TinyGPT BPE model file"),
    (lambda lines: [""], "not a TinyGPT BPE model file"),
])
def test_load_rejects_damaged_or_foreign_files_naming_the_file(saved_model, damage, message):
    lines = saved_model.read_text(encoding="utf-8").split("\n")
    saved_model.write_text("\n".join(damage(lines)), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        BPETokenizer().load(saved_model)
    assert str(saved_model) in str(error.value)


def test_load_rejects_merges_that_refer_to_unknown_ids(saved_model):
    lines = saved_model.read_text(encoding="utf-8").split("\n")
    lines[6] = "4000 97"
    saved_model.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown ids 4000 97"):
        BPETokenizer().load(saved_model)


def test_load_rejects_a_binary_file(tmp_path):
    model_file = tmp_path / "weights.model"
    model_file.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a TinyGPT BPE model file"):
        BPETokenizer().load(model_file)


# ---- the original TinyGPT's module-level steps and .model layout ----------------------------------

@given(ids=st.lists(st.integers(0, 4), max_size=40), more=st.lists(st.integers(0, 4), max_size=10))
def test_get_stats_counts_consecutive_pairs_and_adds_to_given_counts(ids, more):
    assert get_stats(ids) == Counter(zip(ids, ids[1:]))
    counts = get_stats(ids)
    assert get_stats(more, counts) is counts
    assert counts == Counter(zip(ids, ids[1:])) + Counter(zip(more, more[1:]))


@given(ids=st.lists(st.integers(0, 3), max_size=40), pair=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_merge_replaces_every_occurrence_left_to_right_as_str_replace(ids, pair):
    def as_text(sequence):
        return "".join(map(chr, sequence))
    assert as_text(merge(ids, pair, 9)) == as_text(ids).replace(as_text(pair), chr(9))


# A pattern in the original's style: verbose mode (whitespace and comments ignored), written for the
# standard `re` module, whose \w and \d differ from those of `regex` (combining marks, superscripts).
VERBOSE_PATTERN = r"""
    (?i:'[sdmt]|'ll|'ve|'re)|  # contractions
    [^\r\n\w\d]?+\w+|          # a word, maybe after one other character
    [^\s\w\d]++[\r\n]*|         # punctuation runs
    \s*[\r\n]|                  # spaces then a line break
    \s+(?!\S)|                   # trailing spaces
    \s+                          # other spaces
    """
ORIGINAL_TEXT = "It's e\u0301te\u0301, x\u00b2 + y\u00b2!\n  Ça va?  Hello world 1234\n\n" + MULTILINGUAL_TEXT


def write_original_model(path: Path, pattern: str, special_tokens: dict[str, int], merges: dict) -> None:
    """The original TinyGPT's tokenizer.model: repr(pattern), the number of special tokens, a
    'token id' line for each, then an 'id_a id_b' line per merge in the order learnt."""
    lines = [repr(pattern), str(len(special_tokens))]
    lines += [f"{token} {index}" for token, index in special_tokens.items()]
    lines += [f"{first} {second}" for first, second in sorted(merges, key=merges.get)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def original_ids(pattern: str, tokenizer: BPETokenizer, text: str) -> list[int]:
    """The oracle: chunks as the original split them (`re`, verbose mode), then tiktoken's BPE of each."""
    whole_chunk = tiktoken.Encoding(name="one-chunk", pat_str=r"[\s\S]+", special_tokens={},
                                    mergeable_ranks={tokenizer.vocab[i]: i for i in range(256 + len(tokenizer.merges))})
    return [index for chunk in re.findall(re.compile(pattern, re.VERBOSE), text)
            for index in whole_chunk.encode_ordinary(chunk)]


@pytest.fixture
def original_model(shakespeare, tmp_path) -> tuple[Path, BPETokenizer]:
    learnt = BPETokenizer(RegexPatterns.GPT4)
    learnt.train(shakespeare[:20_000], 256 + 40)
    path = tmp_path / "tokenizer.model"
    write_original_model(path, VERBOSE_PATTERN, {"<|endoftext|>": 400}, learnt.merges)
    return path, learnt


def test_load_reads_the_original_layout_and_encodes_as_the_original(original_model):
    path, learnt = original_model
    loaded = BPETokenizer()
    loaded.load(path)
    assert loaded.pattern == VERBOSE_PATTERN and loaded.merges == learnt.merges
    assert loaded.special_tokens == {"<|endoftext|>": 400}
    ids = loaded.encode(ORIGINAL_TEXT)
    assert ids == original_ids(VERBOSE_PATTERN, learnt, ORIGINAL_TEXT)
    assert len(ids) < len(ORIGINAL_TEXT.encode("utf-8"))  # the merges were applied
    assert loaded.decode(ids) == ORIGINAL_TEXT
    with_special = loaded.encode("Hello<|endoftext|>world", allowed_special="all")
    assert with_special.count(400) == 1 and loaded.decode(with_special) == "Hello<|endoftext|>world"


def test_the_original_pattern_is_compiled_in_verbose_mode_with_re(original_model):
    path, _ = original_model
    loaded = BPETokenizer()
    loaded.load(path)
    chunks = loaded.split_into_chunks(ORIGINAL_TEXT)
    assert chunks == re.findall(re.compile(VERBOSE_PATTERN, re.VERBOSE), ORIGINAL_TEXT)
    assert chunks != regex.findall(regex.compile(VERBOSE_PATTERN, regex.VERBOSE), ORIGINAL_TEXT)


def test_a_tokenizer_read_from_the_original_layout_saves_in_it(original_model, tmp_path):
    path, _ = original_model
    loaded = BPETokenizer()
    loaded.load(path)
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again.model").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    reloaded = BPETokenizer()
    reloaded.load(tmp_path / "again.model")
    assert reloaded.encode(ORIGINAL_TEXT) == loaded.encode(ORIGINAL_TEXT)


# Patterns in which re and regex read a shorthand differently (\w \d \s, their negations, \b \B, in and
# out of sets, case-insensitive too): read from the original's layout, they split every code point as re.
SHORTHAND_PATTERNS = [
    r"\w+|\W+", r"\d+|\D+", r"\s+|\S+", r"[^\W\d]+|[\W\d]+", r"[\s\d]+|[^\s\d]+",
    r"(?i:[^\W\d_]+|[\W\d_]+)", r"(?i)\w+|\W+", r"(?:\B[\s\S])+|[\s\S]", r"\b[\s\S]+?\b|[\s\S]",
    r"[\\\]\w-]+ | [^\]\\\w-]+  # a comment with [ \w ] in it", r"(?#[ \w)\w+|\W+",
]
ALL_CHARACTERS = "".join(map(chr, range(0x110000)))
ASCII_CHARACTERS = "".join(map(chr, range(128))) * 2  # ASCII-only text is split by a faster pattern


@pytest.mark.parametrize("text", [ALL_CHARACTERS, ASCII_CHARACTERS], ids=["all", "ascii"])
@pytest.mark.parametrize("pattern", SHORTHAND_PATTERNS)
def test_an_original_pattern_splits_every_code_point_as_re(pattern, text, tmp_path):
    path = tmp_path / "shorthands.model"
    write_original_model(path, pattern, {}, {})
    loaded = BPETokenizer()
    loaded.load(path)
    assert loaded.split_into_chunks(text) == re.findall(re.compile(pattern, re.VERBOSE), text)


@pytest.fixture(scope="module")
def verbose_original(tmp_path_factory) -> BPETokenizer:
    path = tmp_path_factory.mktemp("verbose") / "verbose.model"
    write_original_model(path, VERBOSE_PATTERN, {}, {})
    loaded = BPETokenizer()
    loaded.load(path)
    return loaded


@settings(max_examples=300)
@given(text=st.text(max_size=100) | st.text(st.characters(max_codepoint=127), max_size=100))
def test_the_verbose_original_pattern_splits_any_text_as_re(verbose_original, text):
    assert verbose_original.split_into_chunks(text) == re.findall(re.compile(VERBOSE_PATTERN, re.VERBOSE), text)


@pytest.mark.parametrize("damage, message", [
    (lambda lines: ["__import__('os').system('touch hacked')"] + lines[1:], "not a TinyGPT BPE model file"),
    (lambda lines: ["'(unbalanced'"] + lines[1:], "corrupt or truncated"),
    (lambda lines: ["'(a)|b'"] + lines[1:], "capture group"),
    (lambda lines: ["'a* # may match nothing'"] + lines[1:], "empty string"),
    (lambda lines: lines[:1] + ["x"] + lines[2:], "corrupt or truncated"),
    (lambda lines: lines[:3] + ["4000 97"] + lines[4:], "unknown ids 4000 97"),
    (lambda lines: lines[:2] + ["<|endoftext|> 200"] + lines[3:], "needs an id >= 296"),
])
def test_load_rejects_a_damaged_original_layout(original_model, damage, message, tmp_path, monkeypatch):
    path, _ = original_model
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(damage(lines)), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        BPETokenizer().load(path)
    assert str(path) in str(error.value) and not (tmp_path / "hacked").exists()


# ---- batches of ids as Tensors -------------------------------------------------------------------

def test_call_on_a_string_gives_a_1d_int32_tensor(with_specials):
    ids = with_specials("To be<|endoftext|>")
    assert isinstance(ids, Tensor)
    assert ids.numpy().dtype == np.int32
    assert ids.numpy().tolist() == with_specials.encode("To be<|endoftext|>", allowed_special="all")


def test_call_pads_to_the_longest_with_an_attention_mask(with_specials):
    texts = ["To be, or not to be", "Hi"]
    ids, mask = with_specials(texts, padding_type="longest", padding_token="<|pad|>",
                              return_attention_mask=True)
    encoded = [with_specials.encode(text) for text in texts]
    width = max(len(row) for row in encoded)
    assert ids.shape == mask.shape == (2, width)
    assert ids.numpy()[1].tolist() == encoded[1] + [601] * (width - len(encoded[1]))
    assert mask.numpy().tolist() == [[1] * len(row) + [0] * (width - len(row)) for row in encoded]


def test_call_pads_and_truncates_to_max_length(with_specials):
    ids = with_specials(["To be, or not to be, that is the question", "Hi"], padding_type="max_length",
                        padding_token="<|pad|>", max_length=4, truncation=True)
    assert ids.shape == (2, 4)
    assert ids.numpy()[0].tolist() == with_specials.encode("To be, or not to be, that is the question")[:4]


def test_call_errors_are_clear(with_specials):
    with pytest.raises(ValueError, match="different lengths"):
        with_specials(["To be, or not to be", "Hi"])
    with pytest.raises(ValueError, match="needs a padding_token"):
        with_specials(["To be, or not to be", "Hi"], padding_type="longest")
    with pytest.raises(ValueError, match="more than max_length 2"):
        with_specials(["To be, or not to be"], padding_type="max_length", max_length=2, padding_token="<|pad|>")
    with pytest.raises(ValueError, match="need max_length > 0"):
        with_specials("Hi", truncation=True)
    with pytest.raises(ValueError, match="padding_type must be"):
        with_specials("Hi", padding_type="left")


def test_visualise_tokens_shows_boundaries(trained):
    ids = trained.encode("To be, or not")
    plain = trained.visualise_tokens(ids, colour=False)
    assert plain.replace("|", "") == "To be, or not"
    assert plain.count("|") == len(ids) - 1
    coloured = trained.visualise_tokens(ids)
    assert coloured.count("\x1b[0m") == len(ids)
