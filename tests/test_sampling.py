"""Text as it is generated (tinygpt.sampling): the pieces of stream_text join to the text of generate,
characters split across tokens included; prompts read from FILE:path."""
from __future__ import annotations

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.nn import GPT
from tinygpt.sampling import read_prompt, stream_text
from tinygpt.tokenizer import BPETokenizer

TEXT = "naïve café, 東京 and 北京 🙂 " * 40


@pytest.fixture(scope="module")
def tokenizers_by_name():
    bpe = BPETokenizer()
    bpe.train(TEXT, 300)
    return {"bytes": BPETokenizer(), "bpe": bpe}


@pytest.mark.parametrize("name", ["bytes", "bpe"])
def test_stream_text_joins_to_the_text_of_generate(tokenizers_by_name, name):
    tokenizer = tokenizers_by_name[name]
    tinygpt.manual_seed(0)
    model = GPT(max_seq_length=32, vocab_size=300, num_layers=1, num_heads=2, embedding_dim=16)
    prompt = "東京 café"
    pieces = list(stream_text(model, tokenizer, prompt, 80, temperature=2.0, top_k=None, seed=3))
    ids = model.generate(Tensor([tokenizer.encode(prompt)]), 80, temperature=2.0, rng=np.random.default_rng(3))
    assert pieces[0] == prompt
    assert "".join(pieces) == tokenizer.decode(ids.numpy()[0].tolist(), unknown_ids="replace")
    assert len(pieces) == 80 + 2  # the prompt, one piece per token (maybe empty), the end of the decoder


def test_stream_text_refuses_an_empty_prompt(tokenizers_by_name):
    model = GPT(max_seq_length=8, vocab_size=256, num_layers=1, num_heads=1, embedding_dim=4)
    with pytest.raises(ValueError, match="prompt is empty"):
        list(stream_text(model, tokenizers_by_name["bytes"], "", 3))


def test_read_prompt_reads_a_file_or_gives_the_text(tmp_path):
    (tmp_path / "prompt.txt").write_text("ROMEO:\nBut soft!", encoding="utf-8")
    assert read_prompt(f"FILE:{tmp_path / 'prompt.txt'}") == "ROMEO:\nBut soft!"
    assert read_prompt("ROMEO:") == "ROMEO:"
    with pytest.raises(ValueError, match="cannot read the prompt file"):
        read_prompt(f"FILE:{tmp_path / 'missing.txt'}")
