"""Starting a run from a trained model (--init-from, TrainConfig(init_from=...)): a Hugging Face GPT-2
directory made from a random GPT2Config, with or without its tokenizer files, or a TinyGPT checkpoint.
The run takes the source's architecture and weights, a fresh optimizer, iteration 0, and its first loss
is the source model's loss on that batch (for Hugging Face: computed by transformers). And our own
checkpoint directory is never taken by transformers for a GPT-2 of its own."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygpt.checkpoint import find_checkpoint
from tinygpt.config import TrainConfig
from tinygpt.dataset import default_corpus_path, get_batch
from tinygpt.tokenizer import load_gpt2_tokenizer
from tinygpt.nn import GPT
from tinygpt.tokenizer import BPETokenizer
from tinygpt.corpus import corpus_path, load_tokens
from tinygpt.train import DATA_STREAM, train

torch = pytest.importorskip("torch", reason="torch runs the reference GPT-2")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")
tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers trains the reference tokenizer")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(default_corpus_path().read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path


def run_config(out_dir: Path, corpus: Path, init_from: Path | None, **changes) -> TrainConfig:
    """A short run whose own architecture (4 layers of 128) differs from every source's."""
    settings = dict(data=str(corpus), out_dir=str(out_dir), batch_size=4, max_iters=2, warmup_iters=1,
                    lr_decay_iters=2, eval_interval=2, eval_iters=1, sample_tokens=0, learning_rate=1e-3,
                    init_from=str(init_from) if init_from else None)
    return TrainConfig.from_settings(settings | changes)


def hf_gpt2(directory: Path, vocab_size: int) -> Path:
    """A random GPT-2 (noisy weights, no dropout) saved by transformers."""
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    return directory


def first_batch(config: TrainConfig, tokenizer: BPETokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The batch the run's first step trains on, drawn again from the same random stream."""
    train_tokens, _ = load_tokens(corpus_path(config), tokenizer, config)
    return get_batch(train_tokens, config.model.max_seq_length, config.batch_size,
                     np.random.default_rng([config.seed, DATA_STREAM]))


def hf_loss(directory: Path, x: np.ndarray, y: np.ndarray) -> float:
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.long)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(y, dtype=torch.long).reshape(-1)).item()


def test_init_from_a_hugging_face_directory_starts_from_its_loss(tmp_path, corpus):
    source = hf_gpt2(tmp_path / "hf", vocab_size=300)
    result = train(run_config(tmp_path / "out", corpus, source), verbose=False)
    assert (result.config.model.num_layers, result.config.model.embedding_dim, result.config.model.vocab_size,
            result.config.model.max_seq_length) == (2, 32, 300, 16)
    assert result.history["iterations"][0] == 0 and len(result.tokenizer.vocab) == 256  # no tokenizer: bytes
    x, y = first_batch(result.config, result.tokenizer)
    assert result.history["losses"][0] == pytest.approx(hf_loss(source, x, y), rel=1e-5)
    assert result.history["losses"][1] != result.history["losses"][0]  # it trains


def test_init_from_a_hugging_face_directory_uses_its_tokenizer(tmp_path, corpus):
    trained = tokenizers.Tokenizer(tokenizers.models.BPE())
    trained.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator([corpus.read_text(encoding="utf-8")], trainer)
    source = hf_gpt2(tmp_path / "hf", vocab_size=320)
    trained.save(str(source / "tokenizer.json"))

    result = train(run_config(tmp_path / "out", corpus, source), verbose=False)
    loaded = load_gpt2_tokenizer(source)
    assert result.tokenizer.merges == loaded.canonical().merges
    x, y = first_batch(result.config, result.tokenizer)
    file_ids = np.array(loaded.file_ids.tolist() + list(loaded.special_tokens.values()))
    text = result.tokenizer.decode(x[0].tolist())
    assert trained.encode(text).ids == file_ids[x[0]].tolist()  # the batch, as Hugging Face tokenizes it
    assert result.history["losses"][0] == pytest.approx(hf_loss(source, file_ids[x], file_ids[y]), rel=1e-5)


def test_init_from_a_tinygpt_checkpoint_takes_its_architecture_and_weights(tmp_path, corpus):
    source = run_config(tmp_path / "first", corpus, None, n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=256,
                        max_iters=3)
    first = train(source, verbose=False)
    result = train(run_config(tmp_path / "second", corpus, tmp_path / "first", max_iters=1, seed=5), verbose=False)
    assert result.config.model == first.model.config and result.history["iterations"] == [0]
    x, y = first_batch(result.config, result.tokenizer)
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.tensor import Tensor

    expected = CrossEntropyLoss()(first.model.eval()(Tensor(x)), Tensor(y), reduction="mean").item()
    assert result.history["losses"][0] == pytest.approx(expected, rel=1e-5)
    state = json.loads((find_checkpoint(tmp_path / "second") / "state.json").read_text())
    assert state["iteration"] == 1


def test_init_from_something_else_is_one_clear_error(tmp_path, corpus):
    from tinygpt.config import ConfigError

    with pytest.raises(ConfigError, match="neither a TinyGPT checkpoint"):
        train(run_config(tmp_path / "out", corpus, tmp_path), verbose=False)


def test_our_checkpoint_directory_is_refused_by_from_pretrained(tmp_path, corpus):
    config = run_config(tmp_path / "out", corpus, None, n_layer=1, n_head=2, n_embd=16, block_size=8, max_iters=1)
    train(config, verbose=False)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        transformers.GPT2LMHeadModel.from_pretrained(find_checkpoint(tmp_path / "out"))


def test_tinygpt_train_init_from_on_the_command_line(tmp_path, corpus):
    source = hf_gpt2(tmp_path / "hf", vocab_size=256)
    result = subprocess.run([sys.executable, "-m", "tinygpt", "train", "--data", str(corpus), "--out-dir",
                             str(tmp_path / "out"), "--init-from", str(source), "--max-iters", "1", "--eval-iters", "1",
                             "--batch-size", "2", "--sample-tokens", "0", "--warmup-iters", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "starting from" in result.stdout + result.stderr
    assert GPT.load_gpt2_checkpoint(source).config == TrainConfig.from_settings(
        json.loads((tmp_path / "out" / "ckpt" / "config.json").read_text())["train"]).model


def test_a_checkpoint_written_before_the_rename_still_loads(tmp_path, corpus):
    from tinygpt.checkpoint import load_checkpoint

    config = run_config(tmp_path / "out", corpus, None, n_layer=1, n_head=2, n_embd=16, block_size=8, max_iters=1)
    result = train(config, verbose=False)
    directory = find_checkpoint(tmp_path / "out")
    (directory / "weights.safetensors").rename(directory / "model.safetensors")
    loaded = dict(load_checkpoint(tmp_path / "out").load_model().named_parameters())
    for name, tensor in result.model.named_parameters():
        np.testing.assert_array_equal(loaded[name].numpy(), tensor.numpy(), err_msg=name)
