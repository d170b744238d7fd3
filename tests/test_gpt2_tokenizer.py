"""GPT-2 tokenizer files: load_gpt2_tokenizer gives the ids of Hugging Face `tokenizers` for the same
files (vocab.json + merges.txt, and tokenizer.json), on a tokenizer trained locally; save_gpt2_tokenizer
writes files of any BPETokenizer that `tokenizers` reads into the same ids as ours."""
from __future__ import annotations

import pytest

from tinygpt.tokenizer.gpt2 import GPT2Tokenizer, bytes_to_unicode, load_gpt2_tokenizer, save_gpt2_tokenizer
from tinygpt.tokenizer import BPETokenizer, RegexPatterns

tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is the oracle")

CORPUS = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
          "You are all resolved rather to die than to famish? 1234 5678 90 3.14159, don't we'll they're. "
          "Ünïcödé wörds, naïve café, 東京 and 北京, emoji 🙂🙂 and tabs\tand\n\nnewlines   spaced   out.\n") * 30
MIXED = ("Hello world! Speak, citizen: 2024-12-01 costs $3.50... we'll see. "
         "Café naïve Ünïcödé; 東京タワー 🙂👍🏽 \t\ttabs\n\n\n  indented\r\nwindows<|endoftext|>after  end   ")


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """A byte-level BPE trained with `tokenizers`, saved both ways (its <|endoftext|> is id 0)."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([CORPUS], trainer)
    both, pair = tmp_path_factory.mktemp("tokenizer-json"), tmp_path_factory.mktemp("vocab-merges")
    tokenizer.save(str(both / "tokenizer.json"))
    tokenizer.model.save(str(pair))
    return tokenizer, both, pair


def test_the_byte_table_is_gpt2s():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_vocab_and_merges_give_the_ids_of_tokenizers(hf_files):
    _, _, directory = hf_files
    reference = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(directory / "vocab.json"),
                                                                      str(directory / "merges.txt")))
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = load_gpt2_tokenizer(directory)
    text = MIXED.replace("<|endoftext|>", " ")
    ids = ours.encode(text)
    assert ids == reference.encode(text).ids
    assert ours.decode(ids) == text
    assert max(ids) >= 256 and ours.special_tokens == {"<|endoftext|>": 0}


def test_tokenizer_json_gives_the_ids_of_tokenizers_special_tokens_included(hf_files):
    reference, directory, _ = hf_files
    ours = load_gpt2_tokenizer(directory)
    assert isinstance(ours, GPT2Tokenizer)
    ids = ours.encode(MIXED, allowed_special="all")
    assert ids == reference.encode(MIXED).ids and 0 in ids
    assert ours.decode(ids) == MIXED == reference.decode(ids, skip_special_tokens=False)
    assert ours(MIXED).to_python() == ids


def test_our_ids_are_those_of_the_canonical_tokenizer(hf_files):
    _, directory, _ = hf_files
    ours = load_gpt2_tokenizer(directory)
    canonical = ours.canonical()
    assert canonical.encode(MIXED, allowed_special="all") == ours.our_ids(ours.encode(MIXED, allowed_special="all"))
    assert canonical.decode(canonical.encode(MIXED, allowed_special="all")) == MIXED


@pytest.mark.parametrize("pattern", [RegexPatterns.GPT2, RegexPatterns.GPT4], ids=["gpt2", "gpt4"])
def test_saved_files_give_tokenizers_our_ids(tmp_path, pattern):
    ours = BPETokenizer(pattern)
    ours.train(CORPUS, 400)
    ours.register_special_tokens({"<|endoftext|>": 400})
    written = save_gpt2_tokenizer(ours, tmp_path)
    assert (tmp_path / "tokenizer.json") in written
    reference = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert reference.encode(MIXED).ids == ours.encode(MIXED, allowed_special="all")
    assert load_gpt2_tokenizer(tmp_path).encode(MIXED, allowed_special="all") == \
        ours.encode(MIXED, allowed_special="all")


def test_saved_gpt2_pattern_also_writes_vocab_and_merges_that_tokenizers_reads(tmp_path):
    ours = BPETokenizer(RegexPatterns.GPT2)
    ours.train(CORPUS, 350)
    save_gpt2_tokenizer(ours, tmp_path)
    reference = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(tmp_path / "vocab.json"),
                                                                      str(tmp_path / "merges.txt")))
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = MIXED.replace("<|endoftext|>", "")
    assert reference.encode(text).ids == ours.encode(text)


def test_a_gpt2_tokenizer_saved_again_keeps_its_ids(tmp_path, hf_files):
    _, directory, _ = hf_files
    loaded = load_gpt2_tokenizer(directory)
    save_gpt2_tokenizer(loaded, tmp_path)
    again = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert again.encode(MIXED).ids == loaded.encode(MIXED, allowed_special="all")


def test_a_directory_without_tokenizer_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no GPT-2 tokenizer"):
        load_gpt2_tokenizer(tmp_path)


def test_a_gpt2_tokenizer_refuses_the_tinygpt_model_format(tmp_path, hf_files):
    _, directory, _ = hf_files
    with pytest.raises(ValueError, match="save_gpt2_tokenizer"):
        load_gpt2_tokenizer(directory).save(tmp_path / "tok")
