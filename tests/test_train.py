"""The training loop from Python: exact resume, atomic checkpoints, weight decay groups, config resolution."""
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tinygpt.dataset import default_corpus_path
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import BPETokenizer
from tinygpt.corpus import bytes_per_token
from tinygpt.train import (PRESETS, ConfigError, TrainConfig, build_model, build_optimizer, find_checkpoint,
                           load_checkpoint, resolve_config, train, whole_split_loss)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare: enough text for tiny models, quick to tokenise."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare-head.txt"
    path.write_text(default_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TINYGPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))


def tiny_config(out_dir: Path, corpus: Path, **changes) -> TrainConfig:
    settings = dict(data=str(corpus), out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                    max_iters=8, lr_decay_iters=8, warmup_iters=2, eval_interval=2, eval_iters=2, sample_tokens=0)
    return TrainConfig.from_settings(settings | changes)


def saved_weights(out_dir: Path) -> dict[str, np.ndarray]:
    return dict(load_checkpoint(out_dir).load_model().named_parameters())


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(tmp_path, corpus, dropout):
    whole = train(tiny_config(tmp_path / "whole", corpus, dropout=dropout), verbose=False)
    train(tiny_config(tmp_path / "split", corpus, dropout=dropout, max_iters=4), verbose=False)
    resumed = train(tiny_config(tmp_path / "split", corpus, dropout=dropout, resume=True), verbose=False)

    assert resumed.history == whole.history
    assert len(whole.history["losses"]) == 8
    whole_weights, resumed_weights = saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "split")
    for name, tensor in whole_weights.items():
        np.testing.assert_array_equal(resumed_weights[name].numpy(), tensor.numpy(), err_msg=name)


def test_dropout_changes_the_run(tmp_path, corpus):
    plain = train(tiny_config(tmp_path / "plain", corpus, max_iters=4), verbose=False)
    dropped = train(tiny_config(tmp_path / "dropped", corpus, max_iters=4, dropout=0.2), verbose=False)
    assert plain.history["losses"][0] != dropped.history["losses"][0]


def test_training_lowers_the_validation_loss(tmp_path, corpus):
    config = tiny_config(tmp_path, corpus, n_embd=32, block_size=16, batch_size=8, max_iters=150, lr_decay_iters=150,
                         learning_rate=1e-2, min_lr=1e-3, eval_interval=150, eval_iters=10, sample_tokens=20)
    result = train(config, verbose=False)
    first, last = result.history["evals"][0], result.history["evals"][-1]
    assert first["val_loss"] == pytest.approx(math.log(256), abs=0.1)  # an untrained model is near uniform
    assert last["val_loss"] < 3.5
    assert last["val_bpb"] == pytest.approx(last["val_loss"] / math.log(2))  # byte level: bits per byte = nats / ln 2
    assert result.sample.startswith("\n") and len(result.sample) > 1
    assert result.tokens_per_second > 0


def test_learning_rate_follows_warmup_then_cosine(tmp_path, corpus):
    config = tiny_config(tmp_path, corpus, max_iters=10, warmup_iters=4, lr_decay_iters=8, learning_rate=1e-2, min_lr=1e-3)
    rates = train(config, verbose=False).history["learning_rates"]
    assert rates[:4] == pytest.approx([1e-2 * (i + 1) / 5 for i in range(4)])
    assert rates[4] == pytest.approx(1e-2)
    assert rates[9] == pytest.approx(1e-3)


def test_checkpoint_holds_model_optimizer_tokenizer_config_and_state(tmp_path, corpus):
    config = tiny_config(tmp_path, corpus, max_iters=3, eval_interval=2)
    result = train(config, verbose=False)
    directory = find_checkpoint(tmp_path)
    assert directory == tmp_path / "ckpt" == result.checkpoint_dir
    assert {path.name for path in directory.iterdir()} == {"weights.safetensors", "optimizer.safetensors", "config.json",
                                                           "state.json", "tokenizer.model", "tokenizer.vocab"}
    saved = json.loads((directory / "config.json").read_text())
    assert saved["model"] == asdict(result.model.config) and saved["train"] == config.settings()
    state = json.loads((directory / "state.json").read_text())
    assert state["iteration"] == 3 and state["data_rng"]["bit_generator"] == "PCG64"
    assert [record["iteration"] for record in state["history"]["evals"]] == [0, 2, 3]
    assert not list(tmp_path.glob("ckpt.*"))


CRASH_DRIVER = r"""
import os, shutil, sys
from pathlib import Path
from tinygpt import cli, train

point = sys.argv[1]
if point == "while-writing-files":  # the second save dies after weights.safetensors, before the optimizer state
    save_state = train.AdamW.save_state
    def dying_save_state(self, path, arrays=None):
        if self.step_count == 4:
            os._exit(1)
        save_state(self, path, arrays)
    train.AdamW.save_state = dying_save_state
elif point == "between-renames":  # the old checkpoint is moved aside, the new one not yet in place
    rename = os.rename
    def dying_rename(source, target):
        if Path(target).name == "ckpt" and Path(str(target) + ".old").exists():
            os._exit(1)
        rename(source, target)
    os.rename = dying_rename
elif point == "before-deleting-old":  # the new checkpoint is in place, the old one not yet deleted
    rmtree = shutil.rmtree
    def dying_rmtree(path, *args, **kwargs):
        if Path(path).name == "ckpt.old" and Path(path).exists():
            os._exit(1)
        rmtree(path, *args, **kwargs)
    shutil.rmtree = dying_rmtree
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point, surviving_iteration", [("while-writing-files", 2), ("between-renames", 2),
                                                        ("before-deleting-old", 4)])
def test_a_run_killed_while_saving_leaves_a_complete_checkpoint(tmp_path, corpus, point, surviving_iteration):
    flags = ["train", "--data", str(corpus), "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8",
             "--batch-size", "4", "--eval-interval", "2", "--eval-iters", "2", "--warmup-iters", "1",
             "--lr-decay-iters", "4", "--sample-tokens", "0", "--max-iters", "4"]
    killed = subprocess.run([sys.executable, "-c", CRASH_DRIVER, point, *flags, "--out-dir", str(tmp_path / "killed")],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 1, killed.stderr

    checkpoint = load_checkpoint(tmp_path / "killed")
    assert checkpoint.state["iteration"] == surviving_iteration
    checkpoint.load_model()

    resumed = subprocess.run([sys.executable, "-m", "tinygpt", *flags, "--out-dir", str(tmp_path / "killed"), "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([sys.executable, "-m", "tinygpt", *flags, "--out-dir", str(tmp_path / "whole")],
                           capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    assert load_checkpoint(tmp_path / "killed").state["history"] == load_checkpoint(tmp_path / "whole").state["history"]
    assert not list((tmp_path / "killed").glob("ckpt.*"))  # the next save cleared what the killed one left


def test_weight_decay_touches_matrices_and_embeddings_only():
    config = TrainConfig.from_settings(dict(n_layer=1, n_head=2, n_embd=8, block_size=4, bias=True, learning_rate=0.1,
                                            min_lr=0.1, warmup_iters=0, weight_decay=0.5))
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    before = {name: tensor.numpy().copy() for name, tensor in model.named_parameters()}
    for _, tensor in model.named_parameters():
        tensor.grad = Tensor(np.zeros(tensor.shape, dtype=np.float32))  # zero gradient: only the decay moves values
    optimizer.update()
    for name, tensor in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if tensor.ndim >= 2 else before[name]
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-6, err_msg=name)
    assert any(tensor.ndim == 1 for _, tensor in model.named_parameters())


def test_resolve_config_layers_defaults_preset_and_flags():
    config = resolve_config({"max_iters": 10}, "shakespeare-char-gpu")
    assert (config.model.num_layers, config.model.embedding_dim, config.model.dropout, config.max_iters) == (6, 384, 0.2, 10)
    assert resolve_config({}) == TrainConfig()
    assert {key: TrainConfig().settings()[key] for key in PRESETS["shakespeare-char-cpu"]} == PRESETS["shakespeare-char-cpu"]
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        resolve_config({}, "tiny")


def test_resume_takes_the_checkpoint_settings_and_refuses_another_architecture(tmp_path, corpus):
    train(tiny_config(tmp_path, corpus, max_iters=2), verbose=False)
    config = resolve_config({"out_dir": str(tmp_path), "resume": True, "max_iters": 4})
    assert (config.model.num_layers, config.model.embedding_dim, config.data, config.max_iters) == (1, 16, str(corpus), 4)
    with pytest.raises(ConfigError, match="n_embd=16 but this run asks for n_embd=32"):
        train(tiny_config(tmp_path, corpus, n_embd=32, resume=True), verbose=False)


def test_a_larger_vocab_trains_a_bpe_tokenizer_and_reports_bits_per_byte(tmp_path, corpus):
    result = train(tiny_config(tmp_path, corpus, vocab_size=300, max_iters=2), verbose=False)
    assert len(result.tokenizer.merges) == 44
    saved = BPETokenizer()
    saved.load(tmp_path / "tokenizer.model")
    assert saved.merges == result.tokenizer.merges == load_checkpoint(tmp_path).tokenizer.merges
    record = result.history["evals"][-1]
    assert record["val_bpb"] < record["val_loss"] / math.log(2)  # a token is more than one byte


def test_bytes_per_token_counts_utf8_bytes():
    tokenizer = BPETokenizer()
    tokenizer.train("aaaa bbbb " * 50, 258)
    ids = np.array(tokenizer.encode("aaaa"))
    assert bytes_per_token(ids, tokenizer) == pytest.approx(4 / len(ids))
    assert bytes_per_token(np.array(BPETokenizer().encode("héllo")), BPETokenizer()) == 1.0


def test_loss_curve_is_saved_when_matplotlib_is_installed(tmp_path, corpus):
    pytest.importorskip("matplotlib", reason="the loss curve needs matplotlib")
    result = train(tiny_config(tmp_path, corpus, max_iters=2), verbose=False)
    assert result.plot == tmp_path / "loss.png"
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("changes, message", [
    (dict(block_size=3000), "too short for block size 3000"),
    (dict(n_head=3), "not divisible by n_head 3"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(vocab_size=100), "vocab_size must be >= 256"),
    (dict(eval_interval=-1), "eval_interval must be an integer >= 0"),
    (dict(data="does-not-exist.txt"), "does not exist"),
])
def test_bad_settings_raise_config_error(tmp_path, corpus, changes, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path, corpus, **changes), verbose=False)


def test_whole_split_loss_is_the_mean_over_every_window(tmp_path, corpus):
    """The oracle: torch's cross-entropy over our logits of each non-overlapping window, one at a time."""
    torch = pytest.importorskip("torch")
    config = tiny_config(tmp_path, corpus, batch_size=3)
    model = build_model(config)
    tokens = np.random.default_rng(0).integers(0, 256, 8 * 7 + 5)  # 7 whole windows and a partial one
    loss, covered = whole_split_loss(model, tokens, config)
    assert covered == 7 * 8
    losses = []
    for start in range(0, 7 * 8, 8):
        logits = torch.from_numpy(model(Tensor(tokens[None, start:start + 8])).numpy()[0])
        losses.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(tokens[start + 1:start + 9])).item())
    assert loss == pytest.approx(np.mean(losses), rel=1e-6)
    assert whole_split_loss(model, tokens, config, max_tokens=16) == (pytest.approx(np.mean(losses[:2]), rel=1e-6), 16)
    assert model.training  # left in training mode


def test_two_micro_batches_of_four_step_as_one_batch_of_eight(tmp_path, corpus):
    accumulated = train(tiny_config(tmp_path / "accumulated", corpus, batch_size=4, gradient_accumulation_steps=2),
                        verbose=False)
    whole = train(tiny_config(tmp_path / "whole", corpus, batch_size=8), verbose=False)
    np.testing.assert_allclose(accumulated.history["losses"], whole.history["losses"], rtol=1e-5)
    for (name, ours), (_, theirs) in zip(accumulated.model.named_parameters(), whole.model.named_parameters()):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    assert accumulated.history["losses"] != train(tiny_config(tmp_path / "half", corpus, batch_size=4),
                                                  verbose=False).history["losses"]


def test_metrics_jsonl_holds_every_logged_iteration_and_every_evaluation(tmp_path, corpus):
    result = train(tiny_config(tmp_path, corpus, log_interval=3), verbose=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if record["type"] == "train"]
    assert [record["iter"] for record in steps] == [0, 3, 6]
    assert [record["loss"] for record in steps] == [result.history["losses"][i] for i in (0, 3, 6)]
    assert [record["lr"] for record in steps] == [result.history["learning_rates"][i] for i in (0, 3, 6)]
    assert all(record["tokens_per_s"] > 0 and record["grad_norm"] > 0 and record["elapsed"] > 0 for record in steps)
    evals = [record for record in records if record["type"] == "eval"]
    assert [(record["iter"], record["val_loss"]) for record in evals] == \
        [(record["iteration"], record["val_loss"]) for record in result.history["evals"]]


def test_eval_interval_zero_evaluates_and_saves_at_the_end_only(tmp_path, corpus):
    every = train(tiny_config(tmp_path / "every", corpus, eval_interval=4), verbose=False)
    at_end = train(tiny_config(tmp_path / "end", corpus, eval_interval=0), verbose=False)
    assert [record["iteration"] for record in every.history["evals"]] == [0, 4, 8]
    assert [record["iteration"] for record in at_end.history["evals"]] == [8]
    assert at_end.history["evals"][0] == every.history["evals"][-1]  # the estimate does not touch training
    assert at_end.history["losses"] == every.history["losses"]
    assert load_checkpoint(tmp_path / "end").state["iteration"] == 8


def test_a_resumed_run_keeps_the_metrics_before_its_checkpoint(tmp_path, corpus):
    train(tiny_config(tmp_path / "whole", corpus, log_interval=1), verbose=False)
    train(tiny_config(tmp_path / "split", corpus, log_interval=1, max_iters=4), verbose=False)
    train(tiny_config(tmp_path / "split", corpus, log_interval=1, resume=True), verbose=False)

    def without_time(out_dir: Path) -> list[dict]:
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        return [{key: value for key, value in record.items() if key not in ("elapsed", "tokens_per_s", "mfu")}
                for record in records]
    assert without_time(tmp_path / "split") == without_time(tmp_path / "whole")


def test_training_into_a_directory_with_a_checkpoint_needs_resume_or_overwrite(tmp_path, corpus):
    first = train(tiny_config(tmp_path, corpus, max_iters=4), verbose=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint .*resume=True.*overwrite=True"):
        train(tiny_config(tmp_path, corpus, max_iters=2), verbose=False)
    assert load_checkpoint(tmp_path).state["iteration"] == 4
    replaced = train(tiny_config(tmp_path, corpus, max_iters=2, overwrite=True), verbose=False)
    assert load_checkpoint(tmp_path).state["iteration"] == 2 and replaced.history["losses"] == first.history["losses"][:2]


def test_resume_beyond_max_iters_holds_min_lr_instead_of_restarting_the_schedule(tmp_path, corpus):
    settings = dict(max_iters=6, lr_decay_iters=None, warmup_iters=1, learning_rate=1e-2, min_lr=1e-3)
    first = train(tiny_config(tmp_path, corpus, **settings), verbose=False)
    config = resolve_config({"out_dir": str(tmp_path), "resume": True, "max_iters": 12})
    assert config.lr_decay_iters == 6
    resumed = train(config, verbose=False)
    rates = resumed.history["learning_rates"]
    assert rates[:6] == first.history["learning_rates"]
    assert rates[6:] == [pytest.approx(1e-3)] * 6 and max(rates[6:]) <= rates[5]
    stretched = resolve_config({"out_dir": str(tmp_path), "resume": True, "max_iters": 24, "lr_decay_iters": 24})
    assert stretched.lr_decay_iters == 24


def test_val_data_is_a_whole_separate_file(tmp_path, corpus):
    val_file = tmp_path / "held-out.txt"
    val_file.write_text(default_corpus_path().read_text(encoding="utf-8")[50_000:52_000], encoding="utf-8")
    result = train(tiny_config(tmp_path / "out", corpus, val_data=str(val_file), max_iters=2), verbose=False)
    tokens = np.array(result.tokenizer.encode(val_file.read_text(encoding="utf-8")))
    expected, covered = whole_split_loss(result.model, tokens, result.config)
    assert covered == (len(tokens) - 1) // 8 * 8
    assert result.final_eval["whole_val_loss"] == pytest.approx(expected, rel=1e-6)


def test_the_loss_plot_leaves_pyplot_and_the_global_backend_alone(tmp_path, corpus):
    matplotlib = pytest.importorskip("matplotlib")
    backend_before, pyplot_before = matplotlib.rcParams["backend"], "matplotlib.pyplot" in sys.modules
    assert train(tiny_config(tmp_path, corpus, max_iters=2), verbose=False).plot == tmp_path / "loss.png"
    assert matplotlib.rcParams["backend"] == backend_before and ("matplotlib.pyplot" in sys.modules) == pyplot_before
