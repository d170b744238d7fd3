"""Export to Hugging Face GPT-2 (GPT.save_gpt2_checkpoint): transformers.GPT2LMHeadModel.from_pretrained
loads the directory with logits and greedy tokens equal to ours, with and without biases, for any
vocabulary; the one name map covers exactly Hugging Face's parameters."""
from __future__ import annotations

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.gpt2 import hf_name, hf_names
from tinygpt.nn import GPT

torch = pytest.importorskip("torch", reason="torch runs the reference GPT-2")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")


def noisy_gpt(vocab_size: int, bias: bool, seed: int = 0) -> GPT:
    """A GPT whose every parameter is far from its init (biases non-zero, LayerNorms not ones)."""
    tinygpt.manual_seed(seed)
    model = GPT(max_seq_length=24, vocab_size=vocab_size, num_layers=2, num_heads=2, embedding_dim=16, bias=bias)
    with tinygpt.no_grad():
        for _, parameter in model.named_parameters():
            parameter.assign(parameter + Tensor.normal(parameter.shape, std=0.2))
    return model


def load_hf(directory):
    model = transformers.GPT2LMHeadModel.from_pretrained(directory)
    return model.eval()


@pytest.mark.parametrize("vocab_size, bias", [(256, True), (256, False), (1000, True), (65, False)],
                         ids=["bytes-bias", "bytes-no-bias", "vocab-1000", "vocab-65-no-bias"])
def test_exported_model_loads_in_transformers_with_equal_logits(tmp_path, vocab_size, bias):
    model = noisy_gpt(vocab_size, bias)
    model.save_gpt2_checkpoint(tmp_path / "hf")
    reference = load_hf(tmp_path / "hf")
    assert reference.config.vocab_size == vocab_size and reference.config.n_layer == 2
    ids = np.random.default_rng(1).integers(0, vocab_size, (3, 24))
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model(Tensor(ids)).numpy(), expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("bias", [True, False])
def test_exported_model_generates_the_same_greedy_tokens_in_transformers(tmp_path, bias):
    model = noisy_gpt(300, bias, seed=2)
    model.save_gpt2_checkpoint(tmp_path / "hf")
    reference = load_hf(tmp_path / "hf")
    prompt = np.array([[5, 17, 200, 3], [9, 9, 1, 250]])
    ours = model.generate_greedy(Tensor(prompt), 15).numpy()
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                    max_new_tokens=15, min_new_tokens=15, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_export_then_load_gpt2_checkpoint_gives_back_every_parameter(tmp_path):
    model = noisy_gpt(256, True)
    model.save_gpt2_checkpoint(tmp_path / "hf")
    loaded = GPT.load_gpt2_checkpoint(tmp_path / "hf")
    original = dict(model.named_parameters())
    assert set(dict(loaded.named_parameters())) == set(original)
    for name, tensor in loaded.named_parameters():
        np.testing.assert_array_equal(tensor.numpy(), original[name].numpy(), err_msg=name)


def test_a_model_without_biases_is_exported_with_zero_biases(tmp_path):
    model = noisy_gpt(256, False)
    model.save_gpt2_checkpoint(tmp_path / "hf")
    reference = load_hf(tmp_path / "hf")
    biases = {name: p for name, p in reference.named_parameters() if name.endswith(".bias")}
    assert biases and all(not p.detach().any() for p in biases.values())


def test_the_name_map_covers_exactly_hugging_faces_parameters():
    config = transformers.GPT2Config(n_positions=16, vocab_size=50, n_layer=3, n_head=2, n_embd=8)
    theirs = {name.removeprefix("transformer.") for name in transformers.GPT2LMHeadModel(config).state_dict()}
    theirs.discard("lm_head.weight")  # tied to wte, like ours
    ours = GPT(16, 50, 3, 2, 8)
    assert {hf_name(name) for name, _ in ours.named_parameters()} == theirs
    assert set(hf_names(3).values()) == theirs and set(hf_names(3)) == {name for name, _ in ours.named_parameters()}


def test_a_name_outside_gpt2_is_refused():
    with pytest.raises(ValueError, match="no GPT-2 counterpart"):
        hf_name("blocks.0.attn.q_norm.weights")


@pytest.mark.parametrize("option, value", [("rotary", True), ("norm", "rmsnorm"), ("tied_head", False),
                                           ("logit_soft_cap", 30.0)])
def test_the_speedrun_options_are_refused_and_zero_init_is_not(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"{option}="):
        GPT(16, 50, 1, 2, 8, **{option: value}).save_gpt2_checkpoint(tmp_path / "refused")
    GPT(16, 50, 1, 2, 8, zero_init_projections=True).save_gpt2_checkpoint(tmp_path / "kept")
