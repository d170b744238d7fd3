"""Attention maps against Hugging Face GPT-2's attention probabilities; the `tinygpt attention` and
`tinygpt profile` commands."""
import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.cli import main
from tinygpt.instruments.attention import attention_probabilities, token_labels
from tinygpt.instruments.commands import attention_picture
from tinygpt.nn import GPT
from tinygpt.train import TrainConfig, train

torch = pytest.importorskip("torch", reason="torch is the oracle for the attention probabilities")
transformers = pytest.importorskip("transformers", reason="transformers provides the reference GPT-2")


def test_attention_maps_equal_hugging_faces_attention_probabilities(tmp_path):
    tinygpt.manual_seed(2)
    model = GPT(max_seq_length=16, vocab_size=50, num_layers=3, num_heads=4, embedding_dim=32)
    with tinygpt.no_grad():
        for _, parameter in model.named_parameters():
            parameter.assign(Tensor.normal(parameter.shape, std=0.3))  # far from uniform attention
    model.save_gpt2_checkpoint(tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = np.random.default_rng(0).integers(0, 50, 11)

    ours = attention_probabilities(model, ids)
    with torch.no_grad():
        theirs = torch.stack(reference(torch.tensor(ids[None]), output_attentions=True).attentions)[:, 0].numpy()
    assert ours.shape == theirs.shape == (3, 4, 11, 11)
    assert theirs.max(axis=-1).mean() > 0.3  # peaked rows: the comparison is not of near-uniform maps
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert model.training  # the model is left in the mode it was in


def test_token_labels_escape_what_would_not_show():
    assert token_labels(["R", "\n", " a", "é"]) == ["R", "\\n", "␣a", "é"]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    train(TrainConfig.from_settings(dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=2, max_iters=1,
                                         eval_iters=1, sample_tokens=0, out_dir=str(out_dir))), verbose=False)
    return out_dir


def test_attention_command_draws_the_maps_of_the_checkpoint(checkpoint_dir, capsys):
    assert main(["attention", "--out-dir", str(checkpoint_dir), "--prompt", "ROMEO:"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {checkpoint_dir / 'attention.png'}"
    assert (checkpoint_dir / "attention.png").stat().st_size > 0
    path, probabilities = attention_picture(checkpoint_dir, "ROMEO:", checkpoint_dir / "one.svg", layer=1)
    assert path.stat().st_size > 0 and probabilities.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("arguments, message", [(["--layer", "2"], "--layer must be in [0, 2)"),
                                                (["--prompt", ""], "the prompt is empty"),
                                                (["--prompt", "x" * 17], "more than the model's 16 positions")])
def test_attention_command_refuses_bad_input_in_one_line(checkpoint_dir, capsys, arguments, message):
    argv = ["attention", "--out-dir", str(checkpoint_dir), "--prompt", "ROMEO:"] + arguments
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and error.startswith("tinygpt: error:")


def test_profile_command_prints_both_tables(capsys):
    assert main(["profile", "--steps", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                 "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("MFU") == 2 and "Linear.forward" in out and "blocks.0.attn.forward" in out
    assert "optimizer.update" in out and "Python and the rest" in out
    assert main(["profile", "--steps", "0"]) == 1
