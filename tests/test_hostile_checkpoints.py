"""Crafted checkpoints and degenerate runs: one clear line, bounded memory and time, no good checkpoint lost.

Every case runs the `tinygpt` command as a subprocess under a memory cap and a timeout (conftest.run_capped).
"""
import json
import os
import resource
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file as safe_load

from conftest import TINY_TRAIN_FLAGS, assert_one_line_error, run_capped

TINY = [*TINY_TRAIN_FLAGS, "--sample-tokens", "0"]


def tinygpt(workspace: Path, *args: str, **kwargs):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    return run_capped(list(args), cwd=workspace, env=env, timeout=180, **kwargs)


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """An out dir holding the checkpoint of a tiny model trained for 4 iterations."""
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "trained", "--max-iters", "4", *TINY)
    assert result.returncode == 0, result.stderr
    return workspace / "trained"


def fresh_copy(source: Path, workspace: Path, request, prefix: str = "copy") -> Path:
    """A fresh copy of `source` for one test, to damage."""
    target = workspace / f"{prefix}-{request.node.name}"[:120]
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


@pytest.fixture
def copy(trained, workspace, request) -> Path:
    """A fresh copy of the trained out dir, to damage."""
    return fresh_copy(trained, workspace, request)


def edit_json(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def safetensors_header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def write_safetensors(path: Path, header: dict, body: bytes) -> None:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


def sample(workspace, out_dir, *extra):
    return tinygpt(workspace, "sample", "--out-dir", str(out_dir), "--max-new-tokens", "5", *extra)


def resume(workspace, out_dir, *extra):
    return tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(out_dir), "--resume",
                   "--max-iters", "6", *extra)


# ---- config.json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("num_layers", 1_000_000_000, "weights.safetensors"),
    ("embedding_dim", 10**7, "weights.safetensors"),
    ("max_seq_length", 10**9, "max_seq_length"),
    ("num_heads", 0, "num_heads must be an integer >= 1"),
    ("vocab_size", "many", "vocab_size must be an integer >= 1"),
    ("dropout", 2.0, "dropout must be in [0, 1)"),
])
def test_a_crafted_model_config_is_refused_before_anything_is_allocated(workspace, copy, field, value, message):
    edit_json(copy / "ckpt" / "config.json", lambda record: record["model"].__setitem__(field, value))
    assert_one_line_error(sample(workspace, copy), "corrupt checkpoint", message)


@pytest.mark.parametrize("field, value", [("learning_rate", "fast"), ("max_iters", "many"), ("batch_size", -4),
                                          ("learning_rate", float("nan")), ("seed", 1.5)])
def test_train_settings_of_the_wrong_type_or_range_are_one_line(workspace, copy, field, value):
    edit_json(copy / "ckpt" / "config.json", lambda record: record["train"].__setitem__(field, value))
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), "--resume")
    assert_one_line_error(result, field)


@pytest.mark.parametrize("edit", [
    lambda state: state["history"].pop("evals"),
    lambda state: state["history"].__setitem__("losses", "none"),
    lambda state: state["history"]["evals"].append({"iteration": "x"}),
    lambda state: state.__setitem__("iteration", -1),
    lambda state: state.__setitem__("files", 5),
    lambda state: state["files"].__setitem__("weights.safetensors", 5),
    lambda state: state.__setitem__("data", {"data": "corpus.txt"}),
    lambda state: state.__setitem__("dropout_rng", [1, 2, 3]),
    lambda state: state.__setitem__("dropout_rngs", "rng"),
    lambda state: state.__setitem__("dropout_rngs", [5]),
    lambda state: state.__setitem__("dropout_rngs", [{"bit_generator": "nope"}]),
    lambda state: state.__setitem__("data_rng", {"bit_generator": "PCG64", "state": "x"}),
    lambda state: state["data_rng"]["state"].__setitem__("state", 2**200),
    lambda state: state.__setitem__("elapsed", "12.5"),
    lambda state: state.__setitem__("elapsed", -1.0),
])
def test_a_malformed_state_json_is_one_line(workspace, copy, edit):
    edit_json(copy / "ckpt" / "state.json", edit)
    assert_one_line_error(resume(workspace, copy), "corrupt checkpoint", "state.json")


# ---- the weights ------------------------------------------------------------------------------------

def test_a_weight_whose_header_dtype_is_i32_is_refused(workspace, copy):
    path = copy / "ckpt" / "weights.safetensors"
    header, body = safetensors_header(path)
    name = next(key for key in header if key != "__metadata__")
    header[name]["dtype"] = "I32"
    write_safetensors(path, header, body)
    assert_one_line_error(sample(workspace, copy), "corrupt checkpoint", name, "int32")


def test_a_checkpoint_of_non_finite_weights_is_refused_by_sample_and_resume(workspace, copy):
    path = copy / "ckpt" / "weights.safetensors"
    header, body = safetensors_header(path)
    name = next(key for key in header if key != "__metadata__")
    start, _ = header[name]["data_offsets"]
    body = body[:start] + np.float32(np.nan).tobytes() + body[start + 4:]
    write_safetensors(path, header, body)
    assert_one_line_error(sample(workspace, copy), "non-finite", name)
    assert_one_line_error(resume(workspace, copy), "non-finite", name)


@pytest.mark.parametrize("damage", ["drop exp_avg_sq", "int32 moments", "wrong step"])
def test_damaged_optimizer_state_is_refused(workspace, copy, damage):
    path = copy / "ckpt" / "optimizer.safetensors"
    header, body = safetensors_header(path)
    if damage == "drop exp_avg_sq":
        header = {key: value for key, value in header.items() if not key.endswith("exp_avg_sq")}
    elif damage == "int32 moments":
        for key, value in header.items():
            if key.endswith(".exp_avg"):
                value["dtype"] = "I32"
    else:
        key = next(key for key in header if key.endswith(".step"))
        start, stop = header[key]["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}[header[key]["dtype"]]
        body = body[:start] + np.array(10**9, dtype=dtype).tobytes() + body[stop:]
    write_safetensors(path, header, body)
    assert_one_line_error(resume(workspace, copy), "corrupt checkpoint", "optimizer")


def test_a_tokenizer_with_ids_beyond_the_models_vocabulary_is_one_line(workspace, copy):
    tokenizer = copy / "ckpt" / "tokenizer.model"
    lines = tokenizer.read_text().split("\n")
    lines[2:3] = ["special_tokens 1", '"<|end|>" 5000']
    tokenizer.write_text("\n".join(lines))
    assert_one_line_error(sample(workspace, copy, "--prompt", "<|end|>"), "vocabulary")


# ---- the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--learning-rate", "inf"), ("--learning-rate", "nan"),
                                         ("--weight-decay", "inf"), ("--seed", "-1"), ("--vocab-size", "1000000000000"),
                                         ("--grad-clip", "nan"), ("--dropout", "nan")])
def test_train_refuses_non_finite_or_out_of_range_values_at_parse_time(workspace, flag, value):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "never", *TINY, flag, value)
    assert_one_line_error(result, flag.lstrip("-").replace("-", "_"))
    assert not (workspace / "never" / "ckpt").exists()


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--seed", "-1")])
def test_sample_refuses_non_finite_temperature_and_negative_seed(workspace, trained, flag, value):
    assert_one_line_error(sample(workspace, trained, flag, value), flag)


def test_a_prompt_of_bytes_that_are_not_utf8_is_one_line(workspace, trained):
    result = tinygpt(workspace, "sample", "--out-dir", str(trained), "--prompt", "caf\udce9")
    assert_one_line_error(result, "prompt", "UTF-8")


def test_an_unwritable_out_dir_is_found_before_the_first_iteration(workspace):
    if os.geteuid() == 0:
        locked = workspace / "not-a-dir"
        locked.write_text("a file where a directory should be")
        out_dir = locked / "out"
    else:
        locked = workspace / "locked"
        locked.mkdir(exist_ok=True)
        locked.chmod(0o500)
        out_dir = locked / "out"
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(out_dir), *TINY, "--max-iters", "100000")
    assert_one_line_error(result, "out", "writable")


@pytest.mark.parametrize("kind", ["null", "fifo"])
def test_data_that_is_not_a_regular_file_says_what_it_is(workspace, kind):
    if kind == "null":
        data, expected = "/dev/null", "character device"
    else:
        data, expected = str(workspace / "fifo"), "FIFO"
        if not Path(data).exists():
            os.mkfifo(data)
    result = tinygpt(workspace, "train", "--data", data, "--out-dir", "never", *TINY)
    assert_one_line_error(result, data, expected)


def test_checkpoint_files_all_get_the_same_mode(trained):
    modes = {path.name: path.stat().st_mode & 0o777 for path in (trained / "ckpt").iterdir()}
    assert len(set(modes.values())) == 1, modes


# ---- divergence and a full disk ----------------------------------------------------------------------

def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoint(workspace, copy):
    result = resume(workspace, copy, "--learning-rate", "1000", "--max-iters", "40", "--grad-clip", "0",
                    "--warmup-iters", "0", "--lr-decay-iters", "40")  # a new schedule: resume keeps the old one
    assert_one_line_error(result, "iteration", "non-finite", "learning rate")
    weights = safe_load(copy / "ckpt" / "weights.safetensors")  # the last checkpoint written before the divergence
    assert all(np.isfinite(array).all() for array in weights.values())
    assert sample(workspace, copy).returncode == 0


def test_a_full_disk_keeps_the_old_checkpoint_and_removes_the_staging_directory(workspace, copy):
    before = {path.name: path.read_bytes() for path in (copy / "ckpt").iterdir()}
    limit = max(len(data) for data in before.values()) // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk does
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    result = run_capped(["train", "--data", "corpus.txt", "--out-dir", str(copy), "--resume", "--max-iters", "6"],
                        cwd=workspace, env=env, timeout=180, extra_setup=small_files)
    assert_one_line_error(result, "checkpoint", "kept")
    assert {path.name: path.read_bytes() for path in (copy / "ckpt").iterdir()} == before
    assert not list(copy.glob("ckpt.tmp-*"))


# ---- the token cache ---------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["random bytes", "a third", "FIFO"])
def test_a_damaged_token_cache_is_rebuilt(workspace, trained, damage):
    cache_dir = workspace / "token-cache"
    (cache_file,) = [path for path in cache_dir.iterdir() if not path.name.startswith(".")]
    data = cache_file.read_bytes()
    if damage == "FIFO":  # opened blindly, it would block the run forever
        cache_file.unlink()
        os.mkfifo(cache_file)
    else:
        damaged = np.random.default_rng(0).bytes(len(data)) if damage == "random bytes" else data[:len(data) // 3]
        cache_file.write_bytes(damaged)
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", f"rebuilt-{damage[0]}", *TINY,
                     "--max-iters", "2")
    assert result.returncode == 0, result.stderr
    assert "rebuilding" in result.stderr
    assert cache_file.read_bytes() == data
