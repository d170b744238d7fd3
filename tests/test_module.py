"""Module (a dict of parameters and sub-modules): traversal, freezing, modes, weights on disk; CrossEntropyLoss."""
import json
import pickle
import struct

import numpy as np
import pytest
import torch

import tinygpt
from tinygpt import Tensor
from tinygpt.losses import CrossEntropyLoss
from tinygpt.module import Module
from tinygpt.nn import GPT, MLP, Dropout, Embedding, FullyConnectedLayer, LayerNorm, TransformerBlock

from conftest import assert_close

FORMATS = [".safetensors", ".json"]


class Scaled(Module):
    """A module with a 0-d parameter, a list of tensors and a plain (non-entry) attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Tensor(2.0, requires_grad=True)
        self.offsets = [Tensor.normal((3,), requires_grad=True), Tensor.normal((2, 2), requires_grad=True)]
        self.name = "scaled"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offsets[0]


class Net(Module):
    """Sub-modules as attributes, in a list and nested two levels deep."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = Embedding(7, 3)
        self.body = MLP(3, [5, 3], "gelu")
        self.norm = LayerNorm(3)
        self.dropout = Dropout(0.5)
        self.head = FullyConnectedLayer(3, 4, bias=False)
        self.extra = Scaled()

    def forward(self, ids: Tensor) -> Tensor:
        x = self.extra(self.dropout(self.norm(self.body(self.embedding(ids)))))
        return self.head(x)


def names(module: Module) -> list[str]:
    return [name for name, _ in module.named_parameters()]


def bits(array: np.ndarray) -> np.ndarray:
    """The raw bytes of an array: comparing them checks -0.0, NaN and denormals exactly."""
    return np.ascontiguousarray(array).view(np.uint8)


# ---- entries and traversal ---------------------------------------------------------------------------
def test_module_is_a_dict_of_its_entries_and_attributes_stay_attributes():
    net = Net()
    assert isinstance(net, dict)
    assert list(net.keys()) == ["embedding", "body", "norm", "dropout", "head", "extra"]
    assert net["body"] is net.body and net.extra["scale"] is net.extra.scale
    assert "name" not in net.extra and net.extra.name == "scaled"
    assert "activation_fn" not in net.body and net.body.activation_fn == "gelu"
    net.extra.scale = 3.0  # a plain value replaces the entry and leaves the dict
    assert "scale" not in net.extra and net.extra.scale == 3.0
    with pytest.raises(AttributeError, match="missing"):
        net.missing


def test_parameters_are_nested_dicts_and_lists_keyed_as_the_module():
    net = Net()
    parameters = net.parameters()
    assert list(parameters) == ["embedding", "body", "norm", "head", "extra"]  # dropout has no parameters
    assert parameters["body"]["layers"][1]["bias"] is net.body.layers[1].bias
    assert parameters["extra"]["offsets"][1] is net.extra.offsets[1]
    assert names(net) == ["embedding.embeddings", "body.layers.0.weights", "body.layers.0.bias", "body.layers.1.weights",
                          "body.layers.1.bias", "norm.weights", "norm.bias", "head.weights", "extra.scale",
                          "extra.offsets.0", "extra.offsets.1"]


class WithPrivateEntries(Module):
    """A public weight, a private tensor and a private sub-module: only the public one is a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = Tensor.ones((2,), requires_grad=True)
        self._running_mean = Tensor.zeros((2,))
        self._helper = FullyConnectedLayer(2, 2)


def test_parameters_leave_out_names_starting_with_underscore():
    module = WithPrivateEntries()
    assert "_running_mean" in module and module._helper is module["_helper"]  # still entries
    assert list(module.parameters()) == list(module.trainable_parameters()) == ["weights"]
    assert names(module) == ["weights"] and module.num_parameters() == 2
    outer = Module()
    outer.inner = module
    assert names(outer) == ["inner.weights"]


def test_trainable_parameters_leave_out_frozen_ones_but_keep_list_positions():
    net = Net()
    net.body.layers[0].freeze()
    net.norm.freeze()
    trainable = net.trainable_parameters()
    assert "norm" not in trainable
    assert trainable["body"]["layers"][0] == {}  # list index 1 must still mean layer 1
    assert trainable["body"]["layers"][1]["weights"] is net.body.layers[1].weights
    assert len(net.parameters()["body"]["layers"][0]) == 2


def test_children_are_the_direct_sub_modules():
    net = Net()
    children = net.children()
    assert list(children) == ["embedding", "body", "norm", "dropout", "head", "extra"]
    assert children["body"] is net.body
    assert net.body.children() == {"layers": net.body.layers}
    assert net.head.children() == {} and net.extra.children() == {}


def test_named_modules_lists_self_then_every_sub_module_depth_first():
    net = Net()
    named = net.named_modules()
    assert [name for name, _ in named] == ["", "embedding", "body", "body.layers.0", "body.layers.1", "norm",
                                           "dropout", "head", "extra"]
    assert named[0][1] is net and dict(named)["body.layers.1"] is net.body.layers[1]
    assert net.modules() == [module for _, module in named]


def test_leaf_modules_are_the_modules_without_sub_modules():
    block = TransformerBlock(8, 4, 2)
    leaves = block.leaf_modules()
    assert leaves["attn"]["c_attn"] is block.attn.c_attn and leaves["mlp"]["c_proj"] is block.mlp.c_proj
    assert set(leaves) == {"ln_1", "attn", "ln_2", "mlp", "mlp_dropout"}
    assert set(leaves["attn"]) == {"c_attn", "c_proj", "resid_dropout"}
    assert FullyConnectedLayer(2, 2).leaf_modules() == {}


# ---- layers as the original TinyGPT documents them ---------------------------------------------------
def test_mlp_applies_activation_after_last_layer():
    mlp = MLP(4, [6, 3], "relu")
    reference = []
    for layer in mlp.layers:
        linear = torch.nn.Linear(*layer.weights.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weights.numpy().T))
            linear.bias.copy_(torch.tensor(layer.bias.numpy()))
        reference += [linear, torch.nn.ReLU()]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert_close(mlp(Tensor(x)), torch.nn.Sequential(*reference)(torch.tensor(x)))


def test_mlp_activation_functions_map_the_documented_names_to_functions():
    x = np.linspace(-2.0, 2.0, 9, dtype=np.float32)
    functions = MLP.activation_functions
    assert {"linear", "relu", "gelu"} <= set(functions)
    assert_close(functions["linear"](Tensor(x)), torch.tensor(x))
    assert_close(functions["relu"](Tensor(x)), torch.relu(torch.tensor(x)))
    assert_close(functions["gelu"](Tensor(x)), torch.nn.functional.gelu(torch.tensor(x), approximate="tanh"))


def test_embedding_table_is_named_embeddings_and_weights_is_its_alias():
    embedding = Embedding(7, 3)
    assert names(embedding) == ["embeddings"]
    assert embedding.weights is embedding.embeddings
    ids = np.array([[0, 6, 6], [2, 1, 0]])
    np.testing.assert_array_equal(embedding(Tensor(ids)).numpy(), embedding.embeddings.numpy()[ids])


def test_transformer_block_mlp_has_gpt2_layer_names():
    block = TransformerBlock(8, 4, 2)
    assert [name for name in names(block) if name.startswith("mlp.")] == [
        "mlp.c_fc.weights", "mlp.c_fc.bias", "mlp.c_proj.weights", "mlp.c_proj.bias"]
    assert block.mlp.c_fc.weights.shape == (8, 32) and block.mlp.c_proj.weights.shape == (32, 8)


def test_update_replaces_the_parameters_named_by_a_nested_dict():
    net = Net()
    new_bias = Tensor(np.arange(3, dtype=np.float32), requires_grad=True)
    new_offset = Tensor(np.ones((2, 2), dtype=np.float32))
    untouched = net.body.layers[0].weights
    assert net.update({"body": {"layers": [{}, {"bias": new_bias}]}, "extra": {"offsets": [{}, new_offset]}}) is net
    assert net.body.layers[1].bias is new_bias and net.extra.offsets[1] is new_offset
    assert net.body.layers[0].weights is untouched


def test_update_with_parameters_of_another_module_copies_them_all():
    source, target = Net(), Net()
    target.update(source.parameters())
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        assert a is b, name


def test_apply_maps_every_parameter():
    net = Net()
    before = {name: tensor.numpy() for name, tensor in net.named_parameters()}
    assert net.apply(lambda tensor: Tensor(tensor.numpy() * 2.0, requires_grad=tensor.requires_grad)) is net
    for name, tensor in net.named_parameters():
        np.testing.assert_array_equal(tensor.numpy(), before[name] * 2.0, err_msg=name)
        assert tensor.requires_grad


def test_num_parameters_counts_every_scalar_frozen_included():
    net = Net()
    expected = 7 * 3 + (3 * 5 + 5 + 5 * 3 + 3) + (3 + 3) + 3 * 4 + (1 + 3 + 4)
    net.freeze()
    assert net.num_parameters() == expected


def test_num_parameters_of_gpt_equals_torch_count_of_the_same_gpt2():
    transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")
    config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=3, n_head=4)
    reference = transformers.GPT2LMHeadModel(config)  # the LM head is tied: parameters() counts it once
    ours = GPT(max_seq_length=32, vocab_size=300, num_layers=3, num_heads=4, embedding_dim=48)
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())


# ---- freezing ------------------------------------------------------------------------------------------
def frozen(module: Module) -> set[str]:
    return {name for name, tensor in module.named_parameters() if not tensor.requires_grad}


def test_pack_parameters_moves_them_into_one_flat_array_and_the_model_computes_as_before():
    tinygpt.manual_seed(0)
    model = MLP(4, [5, 3], "gelu")
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32))
    before, values = model(x).numpy(), {name: p.numpy() for name, p in model.named_parameters()}
    names = [name for name, _ in model.named_parameters()][::-1]
    flat = model.pack_parameters(names)
    assert flat.shape == (model.num_parameters(),)
    np.testing.assert_array_equal(model(x).numpy(), before)
    offset = 0
    for name in names:
        tensor = dict(model.named_parameters())[name]
        assert tensor.buffer.data is flat
        np.testing.assert_array_equal(flat[offset:offset + tensor.numel].reshape(tensor.shape), values[name])
        offset += tensor.numel
    flat[:] = 0.0  # the parameters are views of the flat array
    assert all(not p.numpy().any() for _, p in model.named_parameters())


def test_freeze_all_and_unfreeze_all():
    net = Net()
    net.freeze()
    assert frozen(net) == set(names(net)) and net.trainable_parameters() == {}
    net.unfreeze()
    assert frozen(net) == set()


def test_freeze_by_key_recurses_into_sub_modules():
    net = Net()
    net.freeze("bias")
    assert frozen(net) == {"body.layers.0.bias", "body.layers.1.bias", "norm.bias"}
    net.unfreeze(["bias"])
    assert frozen(net) == set()
    net.freeze(["weights", "offsets"])
    assert frozen(net) == {name for name in names(net) if "weights" in name or "offsets" in name}


def test_freeze_without_recurse_touches_only_the_modules_own_parameters():
    net = Net()
    net.extra.freeze(recurse=False)
    assert frozen(net) == {"extra.scale", "extra.offsets.0", "extra.offsets.1"}
    net.body.freeze(recurse=False)  # MLP's only entry is a list of modules: nothing of its own
    assert frozen(net) == {"extra.scale", "extra.offsets.0", "extra.offsets.1"}
    net.extra.unfreeze("scale", recurse=False)
    assert frozen(net) == {"extra.offsets.0", "extra.offsets.1"}


def test_freeze_strict_names_the_unknown_keys_and_changes_nothing():
    net = Net()
    with pytest.raises(KeyError, match="nonexistent"):
        net.extra.freeze(["scale", "nonexistent"], strict=True)
    assert frozen(net) == set()
    net.extra.freeze("scale", strict=True)
    assert frozen(net) == {"extra.scale"}
    with pytest.raises(KeyError, match="bias"):  # strict checks the module's own parameters
        net.freeze("bias", strict=True)
    net.freeze("nonexistent")  # not strict: unknown keys are ignored
    assert frozen(net) == {"extra.scale"}


def test_frozen_parameters_get_no_gradient():
    net = Net()
    net.body.freeze()
    loss = net(Tensor([[1, 2, 3]])).sum()
    loss.backward()
    assert all(tensor.grad is None for _, tensor in net.body.named_parameters())
    assert net.head.weights.grad is not None and net.embedding.embeddings.grad is not None


def test_freeze_drops_existing_gradients():
    net = Net()
    net(Tensor([[1, 2]])).sum().backward()
    net.freeze("weights")
    assert net.head.weights.grad is None and net.body.layers[0].bias.grad is not None


# ---- modes and gradients -----------------------------------------------------------------------------
def test_train_and_eval_set_training_on_every_sub_module():
    net = Net()
    assert all(module.training for module in net.modules())
    assert net.eval() is net
    assert not any(module.training for module in net.modules())
    net.train()
    assert all(module.training for module in net.modules())
    net.train(False)
    assert not any(module.training for module in net.modules())


def test_dropout_is_the_identity_in_eval_and_active_in_train():
    dropout = Dropout(0.5)
    x = Tensor(np.random.default_rng(0).uniform(1.0, 2.0, (64, 64)).astype(np.float32))
    dropout.eval()
    np.testing.assert_array_equal(dropout(x).numpy(), x.numpy())
    dropout.train()
    y = dropout(x).numpy()
    zeroed = y == 0.0
    assert 0.4 < zeroed.mean() < 0.6  # 4,096 draws with p = 0.5: the std of the fraction is 0.008
    np.testing.assert_allclose(y[~zeroed], 2.0 * x.numpy()[~zeroed], rtol=1e-6)


def test_gpt_eval_makes_its_output_deterministic_despite_dropout():
    tinygpt.manual_seed(0)
    gpt = GPT(max_seq_length=8, vocab_size=20, num_layers=1, num_heads=2, embedding_dim=8, dropout=0.5)
    ids = Tensor([[1, 2, 3, 4]])
    gpt.eval()
    np.testing.assert_array_equal(gpt(ids).numpy(), gpt(ids).numpy())
    gpt.train()
    assert not np.array_equal(gpt(ids).numpy(), gpt(ids).numpy())


def test_zero_grad_clears_every_gradient():
    net = Net()
    net(Tensor([[1, 2, 3]])).sum().backward()
    assert all(tensor.grad is not None for name, tensor in net.named_parameters() if name != "extra.offsets.1")
    net.zero_grad()
    assert all(tensor.grad is None for _, tensor in net.named_parameters())


def test_calling_a_module_without_forward_raises():
    with pytest.raises(NotImplementedError, match="forward"):
        Module()(Tensor(1.0))


# ---- weights on disk ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_save_and_load_weights_round_trip_bit_exact(tmp_path, suffix):
    tinygpt.manual_seed(1)
    source = Net()
    special = np.array([-0.0, np.inf, -np.inf, np.nan, 1e-45, np.finfo(np.float32).max, 1.0 / 3.0], dtype=np.float32)
    with tinygpt.no_grad():
        source.body.layers[1].weights[0, :] = Tensor(np.pad(special, (0, 8))[:3])
        source.head.weights[1, :] = Tensor(special[3:7])
    path = tmp_path / f"net{suffix}"
    source.save_weights(path)
    tinygpt.manual_seed(2)
    target = Net()
    target.load_weights(path)
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(bits(b.numpy()), bits(a.numpy()), err_msg=name)
        assert b.requires_grad
    assert target.extra.scale.shape == ()  # a 0-d parameter stays 0-d


@pytest.mark.parametrize("suffix", FORMATS)
def test_save_weights_writes_the_standard_format(tmp_path, suffix):
    net = Net()
    net.save_weights(tmp_path / f"net{suffix}")
    if suffix == ".safetensors":
        from safetensors.numpy import load_file
        arrays = load_file(str(tmp_path / "net.safetensors"))
    else:
        record = json.loads((tmp_path / "net.json").read_text())
        arrays = {name: np.array(entry["data"], dtype=entry["dtype"]).reshape(entry["shape"])
                  for name, entry in record["tensors"].items()}
    assert sorted(arrays) == sorted(names(net))
    np.testing.assert_array_equal(arrays["body.layers.0.weights"], net.body.layers[0].weights.numpy())


def test_save_weights_leaves_no_temporary_files(tmp_path):
    Net().save_weights(tmp_path / "a.safetensors")
    Net().save_weights(tmp_path / "a.safetensors")  # overwriting is fine too
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_a_save_killed_halfway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    from safetensors.numpy import save
    from tinygpt import serialization

    def write_half_then_fail(arrays, filename, metadata=None):
        data = save(arrays, metadata=metadata)
        with open(filename, "wb") as file:
            file.write(data[:len(data) // 2])
        raise OSError("disk full")

    path = tmp_path / "a.safetensors"
    tinygpt.manual_seed(0)
    Net().save_weights(path)
    before = path.read_bytes()
    monkeypatch.setattr(serialization, "save_file", write_half_then_fail)
    tinygpt.manual_seed(1)
    with pytest.raises(OSError, match="disk full"):
        Net().save_weights(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    assert path.read_bytes() == before


def test_load_weights_from_a_list_of_names_and_arrays_or_tensors():
    source, target = Net(), Net()
    pairs = [(name, tensor.numpy() if i % 2 else tensor) for i, (name, tensor) in enumerate(source.named_parameters())]
    target.load_weights(pairs)
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_loaded_weights_keep_frozen_state():
    net = Net()
    net.norm.freeze()
    net.load_weights(list(Net().named_parameters()))
    assert frozen(net) == {"norm.weights", "norm.bias"}


@pytest.mark.parametrize("suffix", FORMATS)
def test_strict_loading_names_every_missing_unexpected_and_misshaped_key(tmp_path, suffix):
    net = Net()
    arrays = {name: tensor.numpy() for name, tensor in net.named_parameters()}
    del arrays["norm.bias"], arrays["extra.offsets.1"]
    arrays["head.bias"] = np.zeros(4, dtype=np.float32)
    arrays["body.layers.1.weights"] = np.zeros((3, 5), dtype=np.float32)
    from tinygpt.serialization import save_arrays
    save_arrays(tmp_path / f"bad{suffix}", arrays)
    target = Net()
    before = {name: tensor for name, tensor in target.named_parameters()}
    with pytest.raises(ValueError) as error:
        target.load_weights(tmp_path / f"bad{suffix}")
    message = str(error.value)
    for expected in ["missing key 'norm.bias'", "missing key 'extra.offsets.1'", "unexpected key 'head.bias'",
                     "'body.layers.1.weights' has shape (3, 5), expected (5, 3)"]:
        assert expected in message
    assert all(tensor is before[name] for name, tensor in target.named_parameters())  # nothing was loaded


def test_non_strict_loading_skips_missing_and_unexpected_keys_but_not_wrong_shapes():
    source, target = Net(), Net()
    pairs = [(name, tensor) for name, tensor in source.named_parameters() if name.startswith("body.")]
    pairs.append(("not.a.parameter", np.zeros(2, dtype=np.float32)))
    kept = target.head.weights
    target.load_weights(pairs, strict=False)
    np.testing.assert_array_equal(target.body.layers[0].weights.numpy(), source.body.layers[0].weights.numpy())
    assert target.head.weights is kept
    first_layer = target.body.layers[0].weights
    target.load_weights([("extra.offsets.1", np.full((2, 2), 7.0, dtype=np.float32)),
                         ("body.layers.1.bias", np.full(3, 5.0, dtype=np.float32))], strict=False)
    assert isinstance(target.extra.offsets, list) and target.body.layers[0].weights is first_layer
    assert np.all(target.extra.offsets[1].numpy() == 7.0) and np.all(target.body.layers[1].bias.numpy() == 5.0)
    with pytest.raises(ValueError, match=r"'head.weights' has shape \(4, 3\), expected \(3, 4\)"):
        target.load_weights([("head.weights", np.zeros((4, 3), dtype=np.float32))], strict=False)


# ---- files that are not what they claim: a clear ValueError, and nothing executed ------------------------
class Payload:
    """Unpickling this creates the file `marker`: a stand-in for arbitrary code execution."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_safetensors(path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code-was-executed"
    pickle.loads(pickle.dumps(Payload(path)))  # the payload works when unpickled ...
    assert path.exists()
    path.unlink()  # ... so its absence after a load shows that the load did not unpickle
    return path


def test_pickle_payload_in_a_weights_file_is_rejected_without_running_it(tmp_path, marker):
    for name in ["pickled.safetensors", "pickled.json"]:
        (tmp_path / name).write_bytes(pickle.dumps({"weights": Payload(marker)}))
        with pytest.raises(ValueError, match=name):
            Net().load_weights(tmp_path / name)
    assert not marker.exists()


def test_torch_save_file_is_rejected_without_unpickling(tmp_path, marker):
    path = tmp_path / "torch.safetensors"
    torch.save({"head.weights": torch.zeros(3, 4), "payload": Payload(marker)}, path)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Net().load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("extension", [".pt", ".pkl", ".bin", ""])
def test_other_extensions_are_refused_before_reading(tmp_path, marker, extension):
    path = tmp_path / f"weights{extension}"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="unknown weights format"):
        Net().load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", FORMATS)
def test_truncated_file_raises_value_error(tmp_path, suffix):
    path = tmp_path / f"net{suffix}"
    Net().save_weights(path)
    data = path.read_bytes()
    for size in (len(data) // 2, 9, 4, 0):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match="not a valid"):
            Net().load_weights(path)


def test_safetensors_header_that_lies_about_sizes_raises_value_error(tmp_path):
    path = tmp_path / "lying.safetensors"
    write_safetensors(path, {"head.weights": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}, bytes(16))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Net().load_weights(path)
    write_safetensors(path, {"head.weights": {"dtype": "F32", "shape": [300, 400], "data_offsets": [0, 48]}}, bytes(48))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Net().load_weights(path)
    path.write_bytes(struct.pack("<Q", 10**6) + b'{"a": 1}')  # header length beyond the end of the file
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Net().load_weights(path)
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Net().load_weights(path)


@pytest.mark.parametrize("record", [
    {"tensors": {"head.weights": {"dtype": "float32", "shape": [3, 4], "data": [1.0, 2.0]}}},
    {"tensors": {"head.weights": {"dtype": "object", "shape": [1], "data": [{"__class__": "os.system"}]}}},
    {"tensors": {"head.weights": {"dtype": "float32", "shape": [1]}}},
    {"tensors": ["head.weights"]},
    ["not", "a", "record"],
], ids=["wrong-size", "object-dtype", "no-data", "tensors-not-a-dict", "not-a-dict"])
def test_malformed_json_weights_raise_value_error(tmp_path, record):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not a valid TinyGPT weights json"):
        Net().load_weights(path, strict=False)


def test_missing_weights_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        Net().load_weights(tmp_path / "nothing.safetensors")


# ---- CrossEntropyLoss against torch.nn.functional.cross_entropy -----------------------------------------
def torch_cross_entropy(logits: np.ndarray, labels: np.ndarray, reduction: str):
    """torch puts classes in dim 1; we put them last: compare on (N, C) rows, then restore the leading dims."""
    classes = logits.shape[-1]
    logits_t = torch.tensor(logits.reshape(-1, classes), requires_grad=True)
    flat_labels = labels.reshape(-1, classes) if labels.dtype.kind == "f" else labels.reshape(-1).astype(np.int64)
    loss = torch.nn.functional.cross_entropy(logits_t, torch.tensor(flat_labels), reduction=reduction)
    return logits_t, (loss.reshape(logits.shape[:-1]) if reduction == "none" else loss)


LEADING_SHAPES = [(), (5,), (2, 3), (2, 3, 4)]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("labels_kind", ["ids", "one-hot", "probabilities"])
def test_cross_entropy_matches_torch(reduction, leading, labels_kind):
    rng = np.random.default_rng(0)
    classes = 6
    logits = rng.normal(scale=3.0, size=leading + (classes,)).astype(np.float32)
    ids = rng.integers(0, classes, leading)
    if labels_kind == "ids":
        labels = ids.astype(np.int32)
    elif labels_kind == "one-hot":
        labels = np.eye(classes, dtype=np.float32)[ids]
    else:
        labels = rng.dirichlet(np.ones(classes), size=leading).astype(np.float32)
    logits_ours = Tensor(logits, requires_grad=True)
    loss = CrossEntropyLoss()(logits_ours, Tensor(labels), reduction=reduction)
    logits_torch, expected = torch_cross_entropy(logits, labels, reduction)
    assert loss.shape == (leading if reduction == "none" else ())
    assert_close(loss, expected, 1e-5, "loss")
    incoming = rng.normal(size=loss.shape).astype(np.float32)
    loss.backward(Tensor(incoming))
    expected.backward(torch.tensor(incoming))
    assert_close(logits_ours.grad, logits_torch.grad.reshape(logits.shape), 1e-5, "gradient")


def test_cross_entropy_ids_and_one_hot_agree():
    rng = np.random.default_rng(1)
    logits = Tensor(rng.normal(size=(4, 7, 10)).astype(np.float32))
    ids = rng.integers(0, 10, (4, 7))
    by_ids = CrossEntropyLoss()(logits, Tensor(ids), reduction="mean").item()
    by_one_hot = CrossEntropyLoss()(logits, Tensor(np.eye(10, dtype=np.float32)[ids]), reduction="mean").item()
    assert by_ids == pytest.approx(by_one_hot, rel=1e-6)


def test_cross_entropy_default_reduction_is_none_and_large_logits_stay_finite():
    logits = Tensor(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    losses = CrossEntropyLoss()(logits, Tensor([0, 2]))
    assert losses.shape == (2,)
    np.testing.assert_allclose(losses.numpy(), [0.0, np.log(3.0)], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("labels, error", [
    (np.zeros((2, 3), dtype=np.int32), ValueError),  # ids need the shape logits.shape[:-1]
    (np.zeros((2,), dtype=np.float32), ValueError),  # probabilities need the shape of logits
    (np.array([0, 4], dtype=np.int32), IndexError),  # ids out of range
])
def test_cross_entropy_rejects_labels_that_do_not_fit(labels, error):
    with pytest.raises(error):
        CrossEntropyLoss()(Tensor(np.zeros((2, 4), dtype=np.float32)), Tensor(labels))


def test_cross_entropy_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss()(Tensor(np.zeros((2, 4), dtype=np.float32)), Tensor([0, 1]), reduction="average")
