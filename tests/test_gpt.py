"""GPT against Hugging Face's GPT-2 (the oracle): logits, loss, every gradient; KV-cache generation; init."""
import json
import math

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.losses import CrossEntropyLoss
from tinygpt import gpt2
from tinygpt.nn import GPT, GPTConfig

torch = pytest.importorskip("torch", reason="torch is the oracle for GPT-2")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")

VOCAB, POSITIONS, LAYERS, HEADS, DIMS = 1000, 128, 2, 4, 64


def hf_name(ours: str) -> str:
    """Our parameter name -> the Hugging Face GPT2LMHeadModel parameter that holds the same values."""
    return "transformer." + gpt2.hf_name(ours)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A random GPT-2 saved as config.json + model.safetensors, and the torch model itself (eval, no dropout).

    Every parameter gets extra noise so that biases and LayerNorm parameters are not their trivial init
    (zeros / ones), and weights are larger than GPT-2's 0.02 so that the logits are far from uniform."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=DIMS, n_layer=LAYERS, n_head=HEADS,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.eval()
    directory = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (3, 40)), rng.integers(0, VOCAB, (3, 40))


def test_load_gpt2_checkpoint_builds_the_configured_architecture(hf_checkpoint):
    directory, reference = hf_checkpoint
    model = GPT.load_gpt2_checkpoint(str(directory))
    assert model.config == GPTConfig(max_seq_length=POSITIONS, vocab_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                                embedding_dim=DIMS, dropout=0.0, bias=True)
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())


def test_load_gpt2_checkpoint_logits_match_hugging_face(hf_checkpoint, batch):
    directory, reference = hf_checkpoint
    model = GPT.load_gpt2_checkpoint(str(directory))
    input_ids, _ = batch
    logits = model(Tensor(input_ids)).numpy()
    with torch.no_grad():
        expected = reference(torch.tensor(input_ids)).logits.numpy()
    assert logits.shape == (3, 40, VOCAB)
    assert np.abs(expected).max() > 1.0  # the logits are not all near zero: the comparison means something
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_loss_and_every_gradient_match_pytorch(hf_checkpoint, batch):
    directory, reference = hf_checkpoint
    model = GPT.load_gpt2_checkpoint(str(directory))
    input_ids, target_ids = batch
    loss = CrossEntropyLoss()(model(Tensor(input_ids)), Tensor(target_ids), reduction="mean")
    loss.backward()

    reference.zero_grad()
    logits = reference(torch.tensor(input_ids)).logits
    expected_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.tensor(target_ids).reshape(-1))
    expected_loss.backward()
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-4)

    expected_grads = dict(reference.named_parameters())
    names = [name for name, _ in model.named_parameters()]
    assert sorted(hf_name(name) for name in names) == sorted(expected_grads)  # every parameter is compared
    for name, parameter in model.named_parameters():
        expected = expected_grads[hf_name(name)].grad.numpy()
        assert parameter.grad is not None, name
        np.testing.assert_allclose(parameter.grad.numpy(), expected, rtol=0, atol=1e-4, err_msg=name)
        # relative to the gradient's own scale, so that small gradients are held to the same standard
        assert np.abs(parameter.grad.numpy() - expected).max() <= 1e-4 * np.abs(expected).max(), name


def test_loss_matches_hugging_face_loss_with_labels(hf_checkpoint, batch):
    directory, reference = hf_checkpoint
    model = GPT.load_gpt2_checkpoint(str(directory))
    input_ids, _ = batch
    logits = model(Tensor(input_ids))
    loss = CrossEntropyLoss()(logits[:, :-1], Tensor(input_ids[:, 1:]), reduction="mean")  # HF shifts the labels
    with torch.no_grad():
        expected = reference(torch.tensor(input_ids), labels=torch.tensor(input_ids)).loss.item()
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_greedy_generation_matches_hugging_face(hf_checkpoint):
    directory, reference = hf_checkpoint
    model = GPT.load_gpt2_checkpoint(str(directory))
    prompt = np.array([[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]])
    ours = model.generate_greedy(Tensor(prompt), 20).numpy()
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                      max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("prompt_length, new_tokens", [(1, 15), (5, 8), (5, 40), (16, 5), (30, 5)],
                         ids=["within-from-1", "within", "grows-beyond", "starts-full", "prompt-longer"])
def test_kv_cache_greedy_equals_uncached(small_gpt, prompt_length, new_tokens):
    prompt = Tensor(np.random.default_rng(prompt_length).integers(0, 50, (2, prompt_length)))
    cached = small_gpt.generate_greedy(prompt, new_tokens).numpy()
    uncached = small_gpt.generate_uncached(prompt, new_tokens).numpy()
    assert cached.shape == (2, prompt_length + new_tokens)
    np.testing.assert_array_equal(cached[:, :prompt_length], prompt.numpy())
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(small_gpt.generate(prompt, new_tokens, temperature=0.0).numpy(), uncached)


def test_cached_logits_equal_full_forward(small_gpt):
    """Feeding a prompt and then one token at a time through the cache gives the logits of one full forward."""
    ids = Tensor(np.random.default_rng(0).integers(0, 50, (2, 12)))
    full = small_gpt(ids).numpy()
    cache = [{} for _ in small_gpt.blocks]
    steps = [small_gpt(ids[:, :5], cache).numpy()] + [small_gpt(ids[:, t:t + 1], cache).numpy() for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-5)


def test_forward_longer_than_max_seq_length_raises(small_gpt):
    with pytest.raises(ValueError, match="max_seq_length"):
        small_gpt(Tensor(np.zeros((1, 17), dtype=np.int32)))


def test_generate_does_not_leave_training_mode_changed(small_gpt):
    small_gpt.train()
    small_gpt.generate(Tensor([[1, 2]]), 2)
    assert small_gpt.training
    small_gpt.eval()
    small_gpt.generate(Tensor([[1, 2]]), 2)
    assert not small_gpt.training


def test_sampling_is_reproducible_under_manual_seed(small_gpt):
    prompt = Tensor([[1, 2, 3], [4, 5, 6]])
    runs = []
    for seed in (7, 7, 8):
        tinygpt.manual_seed(seed)
        runs.append(small_gpt.generate(prompt, 25, temperature=1.5, top_k=10).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_generate_sample_with_temperature_is_generate_at_that_temperature(small_gpt):
    prompt = Tensor([[1, 2, 3], [4, 5, 6]])
    samples = {}
    for temperature in (0.3, 1.5):
        tinygpt.manual_seed(7)
        samples[temperature] = small_gpt.generate_sample_with_temperature(prompt, 25, temperature=temperature).numpy()
        tinygpt.manual_seed(7)
        np.testing.assert_array_equal(samples[temperature],
                                      small_gpt.generate(prompt, 25, temperature=temperature).numpy())
        np.testing.assert_array_equal(samples[temperature][:, :3], prompt.numpy())
    assert not np.array_equal(samples[0.3][:, 3:], samples[1.5][:, 3:])  # same seed, other temperature


def test_top_k_samples_only_among_the_k_most_likely(small_gpt):
    tinygpt.manual_seed(0)
    ids = small_gpt.generate(Tensor([[3, 1, 4, 1, 5]]), 10, temperature=2.0, top_k=3).numpy()
    for t in range(5, ids.shape[1]):
        logits = small_gpt(Tensor(ids[:, max(0, t - 16):t])).numpy()[0, -1]
        assert ids[0, t] in np.argsort(logits)[-3:]


def test_top_k_one_is_greedy(small_gpt):
    prompt = Tensor([[9, 8, 7]])
    tinygpt.manual_seed(0)
    sampled = small_gpt.generate(prompt, 20, temperature=1.0, top_k=1).numpy()
    np.testing.assert_array_equal(sampled, small_gpt.generate_uncached(prompt, 20).numpy())


def test_init_follows_gpt2():
    """N(0, 0.02) weights, residual projections N(0, 0.02 / sqrt(2 * n_layer)), zero biases, unit LayerNorms.

    The sample std of n normal draws has relative standard error 1/sqrt(2n): 0.55% for the smallest matrix
    checked here (128 x 128 = 16,384 values), so a 3% tolerance is more than 5 standard errors."""
    layers = 4
    tinygpt.manual_seed(0)
    model = GPT(max_seq_length=256, vocab_size=512, num_layers=layers, num_heads=4, embedding_dim=128)
    residual = 0.02 / math.sqrt(2 * layers)
    checked = set()
    for name, parameter in model.named_parameters():
        values = parameter.numpy().astype(np.float64)
        if ".ln_" in name or name.startswith("ln_"):
            expected = 1.0 if name.endswith("weights") else 0.0
            assert np.all(values == expected), name
        elif name.endswith("bias"):
            assert np.all(values == 0.0), name
        else:
            std = residual if name.endswith(("attn.c_proj.weights", "mlp.c_proj.weights")) else 0.02
            assert values.size >= 16_384, name
            assert values.std() == pytest.approx(std, rel=0.03), name
            assert abs(values.mean()) < 5 * std / math.sqrt(values.size), name
        checked.add(name)
    assert {"token_embedding.embeddings", "position_embedding.embeddings", "blocks.3.attn.c_proj.weights",
            "blocks.3.mlp.c_proj.weights", "blocks.0.attn.c_attn.weights", "blocks.0.mlp.c_fc.weights"} <= checked


def test_load_gpt2_checkpoint_refuses_a_directory_without_config_or_with_another_activation(tmp_path, hf_checkpoint):
    with pytest.raises(ValueError, match="config.json"):
        GPT.load_gpt2_checkpoint(str(tmp_path))
    directory, _ = hf_checkpoint
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="relu"):
        GPT.load_gpt2_checkpoint(str(tmp_path))


def test_load_gpt2_checkpoint_with_weights_of_another_shape_names_them(tmp_path, hf_checkpoint):
    directory, _ = hf_checkpoint
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": 64}))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"position_embedding.embeddings' has shape \(128, 64\), expected \(64, 64\)"):
        GPT.load_gpt2_checkpoint(str(tmp_path))


@pytest.mark.parametrize("ids, kwargs, message", [
    ([1, 2, 3], {}, "shape \\(batch, length >= 1\\)"),
    ([[1, 2]], {"temperature": -1.0}, "temperature >= 0"),
    ([[1, 2]], {"top_k": 0}, "top_k >= 1"),
])
def test_generate_rejects_bad_arguments(ids, kwargs, message):
    model = GPT(8, 11, 1, 1, 4)
    with pytest.raises(ValueError, match=message):
        model.generate(Tensor(ids), 2, **kwargs)


def test_a_config_without_gpt2_settings_names_them(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": 10}')
    with pytest.raises(ValueError, match="lacks the GPT-2 settings"):
        GPT.load_gpt2_checkpoint(tmp_path)


def test_gpt_built_from_a_gpt_config_equals_one_built_from_its_arguments():
    config = GPTConfig(max_seq_length=8, vocab_size=40, num_layers=2, num_heads=2, embedding_dim=16, bias=False)
    tinygpt.manual_seed(3)
    from_arguments = GPT(8, 40, 2, 2, 16, bias=False)
    tinygpt.manual_seed(3)
    from_config = GPT(config)
    assert from_config.config == from_arguments.config == config
    for (name, ours), (_, theirs) in zip(from_config.named_parameters(), from_arguments.named_parameters()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)


def test_gpt_refuses_a_config_mixed_with_sizes_and_missing_sizes():
    with pytest.raises(TypeError, match="either a GPTConfig or the sizes, got a GPTConfig and num_layers"):
        GPT(GPTConfig(), num_layers=2)
    with pytest.raises(TypeError, match="missing num_heads, embedding_dim"):
        GPT(8, 40, 2)
