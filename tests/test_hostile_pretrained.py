"""--init-from a crafted Hugging Face GPT-2 directory: validated like our own checkpoints (types and sizes first, the
positions inside the parameter bound), every error one line naming the file, bad weights refused as bad input."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from test_hostile_checkpoints import (TINY, fresh_copy, safetensors_header, tinygpt, trained,  # noqa: F401
                                      write_safetensors)


@pytest.fixture(scope="module")
def exported(workspace, trained) -> Path:
    result = tinygpt(workspace, "export", "--out-dir", str(trained), "--to", "hf")
    assert result.returncode == 0, result.stderr
    return workspace / "hf"


@pytest.fixture
def hf_copy(workspace, exported, request) -> Path:
    return fresh_copy(exported, workspace, request, "hf")


def init_from(workspace, directory):
    return tinygpt(workspace, "train", "--data", "corpus.txt", "--init-from", str(directory), "--out-dir",
                   f"from-{directory.name}", *TINY, "--max-iters", "2", "--overwrite")


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, fragment", [
    ({"n_positions": 10**9}, "max_seq_length"),
    ({"n_layer": "twelve"}, "num_layers"),
    ({"n_embd": 10**6}, "config.json"),
    ({"layer_norm_epsilon": -1e-5}, "layer_norm_epsilon"),
    ({"layer_norm_epsilon": "small"}, "layer_norm_epsilon"),
])
def test_a_crafted_config_is_refused_before_anything_is_allocated(workspace, hf_copy, changes, fragment):
    edit_config(hf_copy, **changes)
    assert_one_line_error(init_from(workspace, hf_copy), str(hf_copy), "config.json", fragment)


def test_nan_weights_are_refused_as_bad_input_not_as_a_divergence(workspace, hf_copy):
    path = hf_copy / "model.safetensors"
    header, body = safetensors_header(path)
    name = next(key for key in header if key.endswith("wte.weight"))
    start, _ = header[name]["data_offsets"]
    write_safetensors(path, header, body[:start] + np.float32(np.nan).tobytes() + body[start + 4:])
    result = init_from(workspace, hf_copy)
    assert_one_line_error(result, "model.safetensors", "non-finite")
    assert "learning rate" not in result.stderr


def test_a_config_json_that_is_a_fifo_is_refused(workspace, hf_copy):
    (hf_copy / "config.json").unlink()
    os.mkfifo(hf_copy / "config.json")
    assert_one_line_error(init_from(workspace, hf_copy), "config.json", "FIFO")
