"""Layer statistics (--log-stats) against PyTorch for the same weights and batch; TensorBoard's reader reads
back every scalar a run writes (--tensorboard)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor, gpt2
from tinygpt.instruments.stats import LayerStats, per_layer, plot_stats
from tinygpt.instruments.tensorboard import scalars
from tinygpt.losses import CrossEntropyLoss
from tinygpt.metrics import read_metrics
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW
from tinygpt.train import TrainConfig, train

torch = pytest.importorskip("torch", reason="torch is the oracle for the statistics")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")

VOCAB, POSITIONS, LAYERS = 64, 16, 2
SOURCE = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """One AdamW step of our GPT and of the same weights in Hugging Face's GPT-2 with torch's AdamW: our
    statistics, and the reference's gradients, weights before and after, and block outputs."""
    tinygpt.manual_seed(5)
    model = GPT(max_seq_length=POSITIONS, vocab_size=VOCAB, num_layers=LAYERS, num_heads=2, embedding_dim=32)
    with tinygpt.no_grad():
        for _, parameter in model.named_parameters():
            parameter.assign(Tensor.normal(parameter.shape, std=0.2))
    directory = tmp_path_factory.mktemp("hf")
    model.save_gpt2_checkpoint(directory)
    reference = transformers.GPT2LMHeadModel.from_pretrained(directory).train()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (3, POSITIONS + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    stats = LayerStats(model)
    optimizer = AdamW(model, 1e-2, (0.9, 0.99), weight_decay=0.0)
    with stats.watch():
        optimizer.zero_grad()
        CrossEntropyLoss()(model(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
        optimizer.update()
    ours = stats.record()

    parameters = dict(reference.transformer.named_parameters())
    before = {name: tensor.detach().clone() for name, tensor in parameters.items()}
    outputs = {}
    for index, block in enumerate(reference.transformer.h):
        block.register_forward_hook(lambda module, args, output, index=index:
                                    outputs.__setitem__(f"blocks.{index}", output[0] if isinstance(output, tuple) else output))
    logits = reference(torch.tensor(inputs)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.tensor(targets).reshape(-1)).backward()
    grads = {name: tensor.grad.clone() for name, tensor in parameters.items()}
    torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0).step()
    return model, ours, parameters, before, grads, outputs


def test_gradient_norms_equal_pytorchs(stepped):
    model, ours, parameters, _, grads, _ = stepped
    assert set(ours["grad_norm"]) == {name for name, _ in model.named_parameters()}
    for name, value in ours["grad_norm"].items():
        expected = grads[gpt2.hf_name(name)].double().norm().item()
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-7), name


def test_update_to_weight_ratios_equal_pytorchs(stepped):
    _, ours, parameters, before, _, _ = stepped
    for name, value in ours["update_ratio"].items():
        theirs = gpt2.hf_name(name)
        old, new = before[theirs].double(), parameters[theirs].detach().double()
        expected = ((new - old).norm() / old.norm()).item()
        assert expected > 0
        assert value == pytest.approx(expected, rel=1e-3), name


def test_activation_mean_and_std_equal_pytorchs(stepped):
    _, ours, _, _, _, outputs = stepped
    assert set(ours["activation_mean"]) == set(outputs) == {"blocks.0", "blocks.1"}
    for block, output in outputs.items():
        values = output.detach().double()
        assert ours["activation_mean"][block] == pytest.approx(values.mean().item(), rel=1e-4, abs=1e-6)
        assert ours["activation_std"][block] == pytest.approx(values.std(unbiased=False).item(), rel=1e-4)


def test_per_layer_combines_a_blocks_tensors(stepped):
    _, ours, _, _, grads, _ = stepped
    combined = per_layer(ours)
    block = [tensor for name, tensor in grads.items() if name.startswith("h.1.")]
    expected = torch.cat([tensor.double().reshape(-1) for tensor in block]).norm().item()
    assert combined["grad_norm"]["blocks.1"] == pytest.approx(expected, rel=1e-4)
    assert set(combined["grad_norm"]) == {"token_embedding", "position_embedding", "blocks.0", "blocks.1", "ln_f"}


@pytest.fixture(scope="module")
def instrumented_run(tmp_path_factory):
    """A short run with --log-stats, and --tensorboard where tensorboardX is installed."""
    out_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig.from_settings(dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, max_iters=6,
                                            log_interval=2, eval_interval=3, eval_iters=1, sample_tokens=0,
                                            out_dir=str(out_dir), log_stats=True,
                                            tensorboard=importlib.util.find_spec("tensorboardX") is not None))
    train(config, verbose=False)
    return out_dir


def test_log_stats_writes_a_stats_record_per_log_line_and_the_plot(instrumented_run):
    records = read_metrics(instrumented_run / "metrics.jsonl")
    stats = [record for record in records if record["type"] == "stats"]
    assert [record["iter"] for record in stats] == [0, 2, 4]
    assert all(0 < record["mfu"] < 1 for record in records if record["type"] == "train")
    assert set(stats[0]["activation_std"]) == {"blocks.0", "blocks.1"}
    assert (instrumented_run / "stats.png").stat().st_size > 0
    assert plot_stats([r for r in records if r["type"] != "stats"], instrumented_run / "none.png") is None


def test_tensorboards_reader_reads_back_every_scalar(instrumented_run):
    pytest.importorskip("tensorboardX", reason="the writer of the tensorboard extra")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="tensorboard's event reader (the tensorboard extra)")
    reader = event_accumulator.EventAccumulator(str(instrumented_run / "tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    written = {}
    for record in read_metrics(instrumented_run / "metrics.jsonl"):
        for tag, value in scalars(record).items():
            written.setdefault(tag, []).append((record["iter"], value))
    assert "train/mfu" in written and "grad_norm/blocks.0.attn.c_attn.weights" in written and "eval/val_loss" in written
    assert set(reader.Tags()["scalars"]) == set(written)
    for tag, values in written.items():
        read = [(event.step, event.value) for event in reader.Scalars(tag)]
        assert [step for step, _ in read] == [step for step, _ in values], tag
        np.testing.assert_allclose([value for _, value in read], [value for _, value in values], rtol=1e-6)


def test_tensorboard_without_its_writer_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_tensorboardx(name, *args, **kwargs):
        if name == "tensorboardX":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboardx)
    from tinygpt.config import ConfigError
    config = TrainConfig.from_settings(dict(n_layer=1, n_head=1, n_embd=8, block_size=8, max_iters=1, eval_iters=1,
                                            sample_tokens=0, out_dir=str(tmp_path), tensorboard=True))
    with pytest.raises(ConfigError, match=r"pip install 'tinygpt\[tensorboard\]'"):
        train(config, verbose=False)


def test_a_process_that_ends_without_closing_the_writer_still_writes_its_events(tmp_path):
    """A run stopped by an error or Ctrl-C never reaches close(): tensorboardX closes its writers at exit."""
    pytest.importorskip("tensorboardX", reason="the writer of the tensorboard extra")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="tensorboard's event reader (the tensorboard extra)")
    code = ("from tinygpt.instruments.tensorboard import TensorBoardLog\n"
            f"TensorBoardLog({str(tmp_path)!r}).write({{'type': 'train', 'iter': 3, 'loss': 1.5}})\n"
            "raise SystemExit(1)")
    assert subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(SOURCE)}).returncode == 1
    reader = event_accumulator.EventAccumulator(str(tmp_path))
    reader.Reload()
    assert [(event.step, event.value) for event in reader.Scalars("train/loss")] == [(3, 1.5)]
