"""Data: the token cache, TextDataset, DatasetHandler, get_batch and the train/val split."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import dataset as dataset_module
from tinygpt.dataset import (Dataset, DatasetHandler, TextDataset, default_corpus_path, get_batch,
                             tokenize_corpus, tokenizer_fingerprint, train_val_split)
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import BPETokenizer, RegexPatterns

MIXED_TEXT = ("First line\r\nSecond line, with  spaces \n\n\nx\ty\n 42 ünïcode 你好 😀\n"
              "it's\n  \nend.\nA\nB\r\n") * 20


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own token cache through TINYGPT_CACHE_DIR."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("TINYGPT_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return default_corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(shakespeare) -> BPETokenizer:
    tokenizer = BPETokenizer()
    tokenizer.train(shakespeare[:100_000], 400)
    return tokenizer


@pytest.fixture
def corpus_file(tmp_path, shakespeare):
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare[:30_000], encoding="utf-8")
    return path


class CountingTokenizer(BPETokenizer):
    """Counts calls to encode, to see whether a corpus is encoded again."""

    encode_calls = 0

    def encode(self, text, allowed_special="none_raise"):
        self.encode_calls += 1
        return super().encode(text, allowed_special)


# ---- the embedded corpus -------------------------------------------------------------------------

def test_default_corpus_is_tiny_shakespeare():
    path = default_corpus_path()
    assert path.is_file()
    assert path.stat().st_size == 1_115_394
    assert path.read_text(encoding="utf-8").startswith("First Citizen:")


# ---- the token cache -----------------------------------------------------------------------------

def test_tokenize_corpus_matches_encode_and_is_memory_mapped(corpus_file, tokenizer, cache_dir):
    tokens = tokenize_corpus(corpus_file, tokenizer)
    assert isinstance(tokens, np.memmap)
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == tokenizer.encode(corpus_file.read_text(encoding="utf-8"))
    assert [path.parent for path in cache_dir.iterdir()] == [cache_dir]


def test_a_cached_corpus_is_not_encoded_again(corpus_file, tokenizer, cache_dir):
    counting = CountingTokenizer()
    counting.merges = tokenizer.merges
    first = tokenize_corpus(corpus_file, counting)
    assert counting.encode_calls > 0
    calls_after_first = counting.encode_calls
    second = tokenize_corpus(corpus_file, counting)
    assert counting.encode_calls == calls_after_first
    assert np.array_equal(first, second)
    assert len(list(cache_dir.iterdir())) == 1


def test_a_changed_corpus_or_tokenizer_gets_a_new_cache_file(corpus_file, tokenizer, cache_dir):
    tokenize_corpus(corpus_file, tokenizer)
    other = BPETokenizer(RegexPatterns.GPT2)
    other.merges = tokenizer.merges
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    tokenize_corpus(corpus_file, other)
    corpus_file.write_text("A different corpus.\n", encoding="utf-8")
    assert tokenize_corpus(corpus_file, tokenizer).tolist() == tokenizer.encode("A different corpus.\n")
    assert len(list(cache_dir.iterdir())) == 3


def test_the_same_pattern_compiled_as_the_original_gets_another_fingerprint(tokenizer, tmp_path):
    pattern = r"\w+ | \s+ | [^\w\s]+"  # verbose in the original's layout: the spaces are not part of it
    path = tmp_path / "original.model"
    path.write_text(repr(pattern) + "\n0\n", encoding="utf-8")
    original = BPETokenizer()
    original.load(path)
    assert original.pattern == pattern and original.split_into_chunks("a b!") == ["a", " ", "b", "!"]
    assert tokenizer_fingerprint(original) != tokenizer_fingerprint(BPETokenizer(pattern))


def test_cache_dir_argument_overrides_the_environment(corpus_file, tokenizer, tmp_path, cache_dir):
    tokenize_corpus(corpus_file, tokenizer, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1
    assert not cache_dir.exists()


@pytest.mark.parametrize("pattern", [RegexPatterns.GPT2, RegexPatterns.GPT4, r"\w+|\W"])
def test_encoding_in_blocks_gives_the_ids_of_the_whole_text(pattern, tmp_path, monkeypatch, shakespeare):
    tokenizer = BPETokenizer(pattern)
    tokenizer.train(shakespeare[:20_000] + MIXED_TEXT, 350)
    text = MIXED_TEXT + shakespeare[:5_000]
    path = tmp_path / "mixed.txt"
    path.write_bytes(text.encode("utf-8"))  # keep "\r\n" as it is
    monkeypatch.setattr(dataset_module, "TEXT_BLOCK_CHARS", 37)
    assert tokenize_corpus(path, tokenizer).tolist() == tokenizer.encode(text)
    blank_lines = "\n \n\n\t\r\n" * 40  # no place to cut: one piece
    path.write_text(blank_lines, encoding="utf-8", newline="")
    assert tokenize_corpus(path, tokenizer).tolist() == tokenizer.encode(blank_lines)


def test_large_vocabularies_are_stored_as_uint32(corpus_file, tokenizer):
    large = BPETokenizer()
    large.merges = tokenizer.merges
    large.register_special_tokens({"<|endoftext|>": 70_000})
    tokens = tokenize_corpus(corpus_file, large)
    assert tokens.dtype == np.uint32
    assert tokens.tolist() == tokenizer.encode(corpus_file.read_text(encoding="utf-8"))


def test_tokenize_corpus_errors_are_clear(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        tokenize_corpus(tmp_path / "missing.txt", tokenizer)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        tokenize_corpus(tmp_path / "empty.txt", tokenizer)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text"):
        tokenize_corpus(tmp_path / "latin1.txt", tokenizer)


# ---- TextDataset ---------------------------------------------------------------------------------

def test_text_dataset_yields_every_window(corpus_file, tokenizer):
    dataset = TextDataset(corpus_file, tokenizer, max_seq_length=16)
    tokens = np.array(tokenizer.encode(corpus_file.read_text(encoding="utf-8")))
    assert isinstance(dataset, Dataset)
    assert len(dataset) == len(tokens) - 16
    for index in (0, 1, 2, 17, len(dataset) - 1):
        input_ids, target_ids = dataset[index]
        assert input_ids.dtype == target_ids.dtype == np.int32
        assert input_ids.tolist() == tokens[index:index + 16].tolist()
        assert target_ids.tolist() == tokens[index + 1:index + 17].tolist()
    assert dataset[len(dataset) - 1][1][-1] == tokens[-1]  # the last window ends on the last token
    assert [array.tolist() for array in dataset[-1]] == [array.tolist() for array in dataset[len(dataset) - 1]]
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


def test_text_dataset_errors_are_clear(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextDataset(tmp_path / "missing.txt", tokenizer, 8)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        TextDataset(tmp_path / "empty.txt", tokenizer, 8)
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match=r"has 3 tokens, fewer than max_seq_length \+ 1 = 9"):
        TextDataset(tmp_path / "short.txt", BPETokenizer(), 8)
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        TextDataset(tmp_path / "short.txt", tokenizer, 0)


def test_text_dataset_on_the_embedded_corpus_at_byte_level():
    dataset = TextDataset(default_corpus_path(), BPETokenizer(), max_seq_length=256)
    assert len(dataset) == 1_115_394 - 256
    input_ids, target_ids = dataset[0]
    assert bytes(input_ids.tolist()).startswith(b"First Citizen:\nBefore we proceed")
    assert input_ids[1:].tolist() == target_ids[:-1].tolist()


# ---- DatasetHandler ------------------------------------------------------------------------------

class RangeDataset(Dataset):
    """Item i is (i, [i, i], 0.5 * i): an int, an int vector and a float."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return index, np.array([index, index]), 0.5 * index


def batch_firsts(handler) -> list[list[int]]:
    return [batch[0].numpy().tolist() for batch in handler]


def test_handler_batches_stack_each_field_into_a_tensor():
    handler = DatasetHandler(RangeDataset(10), batch_size=4)
    first = handler[0]
    assert isinstance(first, tuple) and len(first) == 3
    assert all(isinstance(field, Tensor) for field in first)
    assert first[0].numpy().tolist() == [0, 1, 2, 3]
    assert first[0].numpy().dtype == np.int32
    assert first[1].shape == (4, 2)
    assert first[2].numpy().dtype == np.float32
    assert first[2].numpy().tolist() == [0.0, 0.5, 1.0, 1.5]


def test_handler_len_and_drop_last():
    assert len(DatasetHandler(RangeDataset(10), 4)) == 3
    assert batch_firsts(DatasetHandler(RangeDataset(10), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(DatasetHandler(RangeDataset(10), 4, drop_last=True)) == 2
    assert batch_firsts(DatasetHandler(RangeDataset(10), 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(DatasetHandler(RangeDataset(8), 4, drop_last=True)) == 2
    assert len(DatasetHandler(RangeDataset(0), 4)) == 0


def test_handler_indexing_matches_iteration_and_rejects_out_of_range():
    handler = DatasetHandler(RangeDataset(10), 3, shuffle=True, seed=7)
    expected = [handler[index][0].numpy().tolist() for index in range(len(handler))]
    assert batch_firsts(handler) == expected
    assert handler[-1][0].numpy().tolist() == handler[len(handler) - 1][0].numpy().tolist()
    with pytest.raises(IndexError, match="batch index 4 out of range for 4 batches"):
        handler[4]


def test_shuffle_is_seeded_and_differs_per_epoch():
    handler = DatasetHandler(RangeDataset(50), 10, shuffle=True, seed=3)
    first_epoch, second_epoch = batch_firsts(handler), batch_firsts(handler)
    assert sorted(sum(first_epoch, [])) == list(range(50))
    assert sorted(sum(second_epoch, [])) == list(range(50))
    assert first_epoch != second_epoch
    again = DatasetHandler(RangeDataset(50), 10, shuffle=True, seed=3)
    assert [batch_firsts(again), batch_firsts(again)] == [first_epoch, second_epoch]
    assert batch_firsts(DatasetHandler(RangeDataset(50), 10, shuffle=True, seed=4)) != first_epoch


def test_handler_over_a_text_dataset(corpus_file, tokenizer):
    dataset = TextDataset(corpus_file, tokenizer, max_seq_length=8)
    handler = DatasetHandler(dataset, batch_size=5, drop_last=True, shuffle=True, seed=0)
    inputs, targets = handler[0]
    assert inputs.shape == targets.shape == (5, 8)
    assert inputs.numpy()[:, 1:].tolist() == targets.numpy()[:, :-1].tolist()


def test_handler_is_an_iterator_that_next_walks_through_the_batches():
    handler = DatasetHandler(RangeDataset(10), 4)
    assert iter(handler) is handler
    assert [next(handler)[0].numpy().tolist() for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(StopIteration):
        next(handler)
    assert handler.epoch == 1
    assert next(iter(handler))[0].numpy().tolist() == [0, 1, 2, 3]  # iter() starts the next epoch


def test_handler_next_without_iter_starts_the_current_epoch():
    handler = DatasetHandler(RangeDataset(10), 5, shuffle=True, seed=1)
    expected = [handler[index][0].numpy().tolist() for index in range(len(handler))]
    assert [next(handler)[0].numpy().tolist(), next(handler)[0].numpy().tolist()] == expected


def test_handler_rejects_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DatasetHandler(RangeDataset(3), 0)


# ---- random windows and the split ----------------------------------------------------------------

def test_get_batch_gives_shifted_random_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, block_size=16, batch_size=8, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == np.int32
    assert (np.diff(x, axis=1) == 1).all()
    assert (y == x + 1).all()
    again, _ = get_batch(tokens, 16, 8, np.random.default_rng(0))
    assert (again == x).all()


def test_get_batch_reaches_the_last_token_and_rejects_short_data():
    tokens = np.arange(5, dtype=np.uint16)
    x, y = get_batch(tokens, block_size=4, batch_size=3, rng=np.random.default_rng(1))
    assert x.tolist() == [[0, 1, 2, 3]] * 3 and y.tolist() == [[1, 2, 3, 4]] * 3
    with pytest.raises(ValueError, match="need at least block_size \\+ 1 = 6 tokens, got 5"):
        get_batch(tokens, block_size=5, batch_size=1, rng=np.random.default_rng(1))


def test_train_val_split_keeps_ninety_percent_for_training(corpus_file, tokenizer):
    tokens = tokenize_corpus(corpus_file, tokenizer)
    train, val = train_val_split(tokens)
    assert len(train) == int(len(tokens) * 0.9)
    assert np.concatenate([train, val]).tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(tokens, 1.0)


def test_a_write_killed_halfway_leaves_the_cache_as_it_was(corpus_file, tokenizer, cache_dir, monkeypatch):
    tokenize_corpus(corpus_file, tokenizer)
    before = {name: (cache_dir / name).read_bytes() for name in os.listdir(cache_dir)}
    text = corpus_file.read_text(encoding="utf-8") + "A changed corpus.\n"
    corpus_file.write_text(text, encoding="utf-8")
    read_text_blocks = dataset_module._read_text_blocks
    blocks_written = []

    def first_block_then_disk_full(*args):
        for block in read_text_blocks(*args):
            if blocks_written:
                raise OSError("disk full")
            blocks_written.append(block)
            yield block

    monkeypatch.setattr(dataset_module, "TEXT_BLOCK_CHARS", 1_000)
    monkeypatch.setattr(dataset_module, "_read_text_blocks", first_block_then_disk_full)
    with pytest.raises(OSError, match="disk full"):
        tokenize_corpus(corpus_file, tokenizer)
    assert len(blocks_written) == 1
    assert {name: (cache_dir / name).read_bytes() for name in os.listdir(cache_dir)} == before

    monkeypatch.setattr(dataset_module, "_read_text_blocks", read_text_blocks)
    assert tokenize_corpus(corpus_file, tokenizer).tolist() == tokenizer.encode(text)


class Vectors(Dataset):
    """Item i is the array [i, i + 1]: not a tuple, so one field."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int):
        return np.array([index, index + 1])


def test_items_that_are_not_tuples_make_a_one_field_batch():
    batch = DatasetHandler(Vectors(), batch_size=2)[1]
    assert len(batch) == 1
    assert batch[0].numpy().tolist() == [[2, 3], [3, 4]]


# ---- tokenising in pieces: any line endings, no newline at all --------------------------------------

PIECES = ["a", "b", "ll", "'", "s", "'ll", "1", "234", " ", "  ", "\r\n", "\n", "\r", "\t", "!", ".", "é", "你", "😀",
          "<|end|>"]


@pytest.fixture(scope="module")
def tokenizers_with_a_special_token(shakespeare) -> dict[str, BPETokenizer]:
    trained = {}
    for name, pattern in (("gpt2", RegexPatterns.GPT2), ("gpt4", RegexPatterns.GPT4)):
        tokenizer = BPETokenizer(pattern)
        tokenizer.train(shakespeare[:10_000].replace("\n", "\r\n") + MIXED_TEXT, 320)
        tokenizer.register_special_tokens({"<|end|>": 400})
        trained[name] = tokenizer
    return trained


@settings(max_examples=150)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=60), block=st.integers(1, 9),
       pattern=st.sampled_from(["gpt2", "gpt4"]))
def test_any_text_tokenised_in_small_blocks_gives_the_ids_of_the_whole_text(
        pieces, block, pattern, tokenizers_with_a_special_token, tmp_path_factory):
    tokenizer = tokenizers_with_a_special_token[pattern]
    text = "".join(pieces)
    path = tmp_path_factory.mktemp("pieces") / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces_read = list(dataset_module._read_text_blocks(path, tokenizer, block))
    assert "".join(pieces_read) == text
    assert [index for piece in pieces_read for index in tokenizer.encode(piece, allowed_special="all")] == \
        tokenizer.encode(text, allowed_special="all")


@pytest.mark.parametrize("line_end", ["\r\n", " ", "\r"])
def test_text_without_unix_newlines_is_cut_into_blocks(shakespeare, tmp_path, line_end):
    path = tmp_path / "text.txt"
    path.write_bytes(shakespeare[:50_000].replace("\n", line_end).encode("utf-8"))
    pieces = list(dataset_module._read_text_blocks(path, BPETokenizer(RegexPatterns.GPT4), 1_000))
    assert max(map(len, pieces)) <= 2 * 1_000  # a block and what was left of the one before


def test_a_nul_byte_or_a_bad_byte_is_reported_at_its_offset_in_the_file(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(dataset_module, "TEXT_BLOCK_CHARS", 100)
    path = tmp_path / "binary.txt"
    path.write_bytes(b"hello world " * 50 + b"\0\0\0")
    with pytest.raises(ValueError, match="NUL byte \\(at byte 600\\)"):
        tokenize_corpus(path, tokenizer)
    path.write_bytes(b"hello world " * 50 + "é".encode("utf-8")[:1] + b"x")
    with pytest.raises(ValueError, match="at byte 600\\)"):
        tokenize_corpus(path, tokenizer)
