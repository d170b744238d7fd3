"""The tokenizer on the benchmark's three corpora (Tiny Shakespeare, code, multilingual text), against tiktoken
and Hugging Face `tokenizers`; the compiled scanner against `regex`; the registry's patterns in linear time."""
import importlib.util
import time
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.tokenizer import SPLIT_PATTERNS, BPETokenizer, RegexPatterns, save_gpt2_tokenizer
from tinygpt.tokenizer.fast import jit
from tinygpt.tokenizer.scanner import scan

pytestmark = pytest.mark.usefixtures("compiled_tokenizer_loops")  # encodes are timed below

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is the oracle for encoding")
tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the oracle for its files")

BENCH = Path(__file__).parent.parent / "benchmarks" / "bench_tokenizer.py"
CORPUS_CHARACTERS = 40_000
# Characters where the patterns' alternatives meet: contractions (with the long s that (?i) folds to s),
# spaces of several kinds, newlines, letters, numbers and others of several scripts, emoji.
HARD_CHARACTERS = " \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000'sdmtlvreSDMTLVRE\u017fK09aZ.,!-\u00e9\u0416\u4e2d\U0001f600\u0661\u216b\u00b2_"


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("bench_tokenizer", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.corpora(CORPUS_CHARACTERS)


@pytest.fixture(scope="module", params=sorted(SPLIT_PATTERNS))
def trained(request, corpora) -> BPETokenizer:
    """A tokenizer per registry pattern trained on the three corpora together at vocab 1,024."""
    tokenizer = BPETokenizer(SPLIT_PATTERNS[request.param].pattern)
    tokenizer.train("".join(corpora.values()), 1024)
    return tokenizer


def tiktoken_oracle(tokenizer: BPETokenizer) -> "tiktoken.Encoding":
    return tiktoken.Encoding(name="tinygpt-test", pat_str=tokenizer.pattern, special_tokens={},
                             mergeable_ranks={tokenizer.vocab[index]: index for index in range(256 + len(tokenizer.merges))})


def test_the_corpora_hold_code_and_several_scripts_with_emoji(corpora):
    assert set(corpora) == {"shakespeare", "code", "multilingual"}
    assert all(len(text) > CORPUS_CHARACTERS // 2 for text in corpora.values())
    assert "def " in corpora["code"] and "return" in corpora["code"]
    for script in ("Cyrillic", "Greek", "Han", "Hangul", "Arabic", "Hebrew", "Thai"):
        assert regex.search(rf"\p{{Script={script}}}", corpora["multilingual"]), script
    assert regex.search(r"\p{Extended_Pictographic}", corpora["multilingual"])


@pytest.mark.parametrize("name", ["shakespeare", "code", "multilingual"])
def test_ids_equal_tiktoken_cold_and_warm_on_each_corpus(trained, corpora, name):
    fresh = BPETokenizer(trained.pattern)
    fresh.merges = trained.merges
    expected = tiktoken_oracle(trained).encode_ordinary(corpora[name])
    assert fresh.encode(corpora[name]) == expected
    assert fresh.encode(corpora[name]) == expected


def test_without_numba_the_ids_are_the_same(trained, corpora, monkeypatch):
    monkeypatch.setattr("tinygpt.tokenizer.fast.jit", lambda: None)  # as when numba cannot be imported
    fresh = BPETokenizer(trained.pattern)
    fresh.merges = trained.merges
    text = "".join(corpora.values())
    assert fresh.encode(text) == tiktoken_oracle(trained).encode_ordinary(text)


def test_a_numba_that_fails_to_import_leaves_the_python_loops_with_the_same_ids(trained, corpora, monkeypatch):
    def numba_refuses():
        raise ImportError("numba refuses this numpy")

    monkeypatch.setattr("tinygpt.kernels.prepare_numba", numba_refuses)
    jit.cache_clear()
    try:
        fresh = BPETokenizer(trained.pattern)
        fresh.merges = trained.merges
        text = corpora["multilingual"][:3000]
        assert fresh.encode(text) == tiktoken_oracle(trained).encode_ordinary(text)
    finally:
        jit.cache_clear()  # the next call asks the real numba again


@pytest.mark.parametrize("name", ["shakespeare", "code", "multilingual"])
def test_ids_equal_hugging_face_tokenizers_loading_our_files(tmp_path, corpora, name):
    """GPT-2's pattern: Hugging Face's Oniguruma reads GPT-4's `\\p{N}{1,3}+` as `(\\p{N}{1,3})+`."""
    ours = BPETokenizer(RegexPatterns.GPT2)
    ours.train("".join(corpora.values()), 1024)
    save_gpt2_tokenizer(ours, tmp_path)
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours.encode(corpora[name]) == theirs.encode(corpora[name]).ids


@pytest.mark.skipif(jit() is None, reason="the scanner is compiled with numba")
@pytest.mark.parametrize("name", ["shakespeare", "code", "multilingual"])
def test_the_scanner_splits_each_corpus_as_regex(corpora, name):
    for known in SPLIT_PATTERNS.values():
        assert scan(corpora[name], known.gpt4_rules) == regex.findall(known.pattern, corpora[name])


@pytest.mark.skipif(jit() is None, reason="the scanner is compiled with numba")
@settings(deadline=None, max_examples=400, derandomize=True)
@given(text=st.one_of(st.text(), st.text(alphabet=st.sampled_from(HARD_CHARACTERS))))
def test_the_scanner_splits_any_text_as_regex(text):
    for known in SPLIT_PATTERNS.values():
        assert scan(text, known.gpt4_rules) == regex.findall(known.pattern, text)


@pytest.mark.parametrize("unit", [" ", "\n ", "\n" + " " * 99, "'", "1", "a", " \t", "'s1"])
def test_the_registry_patterns_split_long_runs_in_linear_time(unit):
    text = unit * (300_000 // len(unit)) + "x"
    tokenizer = BPETokenizer(RegexPatterns.GPT4)
    started = time.perf_counter()
    for known in SPLIT_PATTERNS.values():
        tokenizer.pattern = known.pattern
        assert "".join(tokenizer.split_into_chunks(text)) == text
    assert time.perf_counter() - started < 5
