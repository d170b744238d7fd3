"""The profile: FLOPs against PyTorch's FlopCounterMode and nanoGPT's estimate, rows against the step time."""
import time

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor, tensor
from tinygpt.config import default_model
from tinygpt.instruments import gpt_step_flops, profile
from tinygpt.instruments.profile import OUTSIDE
from tinygpt.losses import CrossEntropyLoss
from tinygpt.module import Module
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW

torch = pytest.importorskip("torch", reason="torch's FlopCounterMode counts the reference FLOPs")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

BATCH = 12


@pytest.fixture(scope="module")
def default_gpt():
    """The default preset's GPT (4 layers, 4 heads, width 128, 64 positions, bytes), a batch and an optimizer."""
    tinygpt.manual_seed(0)
    model = GPT(default_model())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (BATCH, 65))
    return model, ids[:, :-1], ids[:, 1:], AdamW(model, 1e-3)


def training_step(model, inputs, targets, optimizer, timed=None):
    optimizer.zero_grad()
    loss = CrossEntropyLoss()(model(Tensor(inputs)), Tensor(targets), reduction="mean")
    loss.backward()
    if timed is None:
        optimizer.update()
    else:
        with timed.region("optimizer.update"):
            optimizer.update()


def test_flops_of_a_gpt_step_equal_pytorchs_flop_counter(default_gpt):
    model, inputs, targets, optimizer = default_gpt
    with profile(model, peak_flops=1.0) as p:
        training_step(model, inputs, targets, optimizer)

    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")  # its products counted
    ids = torch.tensor(inputs)
    with FlopCounterMode(display=False) as counter:
        logits = reference(ids).logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, 256), torch.tensor(targets).reshape(-1)).backward()
    assert p.flops == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_flops_of_a_gpt_step_equal_the_analytic_count(default_gpt):
    model, inputs, targets, optimizer = default_gpt
    with profile(model, peak_flops=1.0) as p:
        training_step(model, inputs, targets, optimizer)
    config = model.config
    # nanoGPT's estimate_mfu: N counts every parameter but the position table
    parameters = model.num_parameters() - model.position_embedding.embeddings.numel
    analytic = 6 * parameters * inputs.size + 12 * config.num_layers * config.embedding_dim * 64 * inputs.size
    assert p.flops == pytest.approx(analytic, rel=0.01)
    assert gpt_step_flops(parameters, config.num_layers, config.embedding_dim, 64, inputs.size) == analytic


def test_flops_by_module_are_each_blocks_products(default_gpt):
    model, inputs, targets, optimizer = default_gpt
    with profile(model, peak_flops=1.0) as p:
        training_step(model, inputs, targets, optimizer)
    rows = {row.name: row.flops for row in p.rows(by="module")}
    tokens, width = inputs.size, 128
    attention = 2 * tokens * (width * 3 * width + width * width) + 4 * BATCH * 64 * 64 * width
    mlp = 2 * tokens * 2 * width * 4 * width
    for block in range(4):
        assert rows[f"blocks.{block}.attn.forward"] == attention
        assert rows[f"blocks.{block}.attn.backward"] == 2 * attention
        assert rows[f"blocks.{block}.mlp.forward"] == mlp
        assert rows[f"blocks.{block}.mlp.backward"] == 2 * mlp


def test_rows_add_up_to_the_measured_step_time(default_gpt, threads):
    """Steps timed without the profile and with it, alternating: the profiled rows (ops, the optimizer's
    region, Python) add up to the plain step's time within 10%. Each side's fastest round is compared: other
    work on a shared machine only ever adds time, and one thread keeps a busy machine's threads from
    waiting for each other."""
    model, inputs, targets, optimizer = default_gpt
    threads(1)
    training_step(model, inputs, targets, optimizer)
    plain, profiled = [], []
    for _ in range(15):
        started = time.perf_counter()
        training_step(model, inputs, targets, optimizer)
        plain.append(time.perf_counter() - started)
        with profile(model, peak_flops=1.0) as p:
            training_step(model, inputs, targets, optimizer, timed=p)
        rows = p.rows()
        assert all(row.seconds >= 0 for row in rows)
        assert {"Linear.forward", "Linear.backward", "optimizer.update", OUTSIDE} <= {row.name for row in rows}
        profiled.append(sum(row.seconds for row in rows))
    assert min(profiled) == pytest.approx(min(plain), rel=0.10)


def test_the_profile_leaves_nothing_installed_even_after_an_error(default_gpt):
    model, inputs, _, _ = default_gpt
    call = Module.__call__
    with pytest.raises(ValueError):
        with profile(model, peak_flops=1.0):
            model(Tensor(inputs[:, :3]))
            raise ValueError("stop")
    assert tensor._observer is None and Module.__call__ is call


def test_one_instrument_at_a_time():
    with profile(peak_flops=1.0):
        with pytest.raises(RuntimeError, match="one instrument at a time"):
            with profile(peak_flops=1.0):
                pass


def test_table_reports_mfu_against_the_given_peak(default_gpt):
    model, inputs, targets, optimizer = default_gpt
    with profile(model, peak_flops=1e12) as p:
        training_step(model, inputs, targets, optimizer)
    assert p.mfu() == pytest.approx(p.flops / p.seconds / 1e12)
    table = p.table()
    assert f"MFU {p.mfu():.1%} of a peak of 1000.0 GFLOP/s" in table
    assert "Linear.backward" in table and OUTSIDE in table
    with pytest.raises(ValueError, match="by must be"):
        p.rows(by="layer")


@pytest.mark.parametrize("shapes", [((3, 1, 4, 5), (2, 5, 6)), ((4, 5), (5, 3)), ((7,), (7, 3))])
def test_matmul_flops_equal_pytorchs_with_broadcast_batches_and_vectors(shapes):
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    with profile(peak_flops=1.0) as p:
        (Tensor(x, requires_grad=True) @ Tensor(y, requires_grad=True)).sum().backward()
    tx, ty = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        (tx @ ty).sum().backward()
    assert counter.get_total_flops() > 0
    assert p.flops == counter.get_total_flops()


def test_attention_flops_with_fewer_queries_than_keys_equal_pytorchs():
    from tinygpt import apply_op, mlops

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, length, 8)).astype(np.float32) for length in (4, 7, 7))
    with profile(peak_flops=1.0) as p:
        apply_op(mlops.ScaledDotProductAttention, *(Tensor(a, requires_grad=True) for a in (q, k, v))).sum().backward()
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    with FlopCounterMode(display=False) as counter:  # the composition: FlopCounterMode counts no CPU sdpa
        scores = (tq @ tk.transpose(-1, -2)) / np.sqrt(8)
        keys_seen = torch.ones(4, 7, dtype=torch.bool).tril(diagonal=7 - 4)
        (scores.masked_fill(~keys_seen, float("-inf")).softmax(-1) @ tv).sum().backward()
    assert counter.get_total_flops() > 0
    assert p.flops == counter.get_total_flops()
