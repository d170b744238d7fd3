"""Fuzzing a real checkpoint: whatever is done to its files, `tinygpt sample` samples or prints one clear line.

Each example mutates one file of a small trained checkpoint (bytes anywhere, a JSON value, a safetensors
header field, a tokenizer line) and runs the command under a memory cap and a timeout. In CI the example
count is small (TINYGPT_FUZZ_EXAMPLES, default 12); a longer run:

    TINYGPT_FUZZ_EXAMPLES=2000 HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_fuzz_checkpoint.py
"""
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_capped
from tinygpt.dataset import default_corpus_path

EXAMPLES = int(os.environ.get("TINYGPT_FUZZ_EXAMPLES", "12"))
FILES = ("config.json", "state.json", "weights.safetensors", "optimizer.safetensors", "tokenizer.model")
SECONDS_PER_RUN = 120

json_values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                        st.lists(st.integers(min_value=-3, max_value=10**12), max_size=3))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "corpus.txt").write_text(default_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    result = run_capped(["train", "--data", "corpus.txt", "--out-dir", "out", "--vocab-size", "300", "--max-iters", "2",
                         "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
                         "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "1", "--sample-tokens", "0"],
                        cwd=root, env=os.environ | {"TINYGPT_CACHE_DIR": str(root / "cache")}, timeout=300)
    assert result.returncode == 0, result.stderr
    return root / "out"


def mutate_bytes(data: bytes, draw) -> bytes:
    """Overwrite, insert, delete or truncate at a drawn position."""
    position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
    kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
    junk = draw(st.binary(min_size=1, max_size=16))
    if kind == "overwrite":
        return data[:position] + junk + data[position + len(junk):]
    if kind == "insert":
        return data[:position] + junk + data[position:]
    if kind == "delete":
        return data[:position] + data[position + len(junk):]
    return data[:position]


def mutate_json(text: str, draw) -> str:
    """Replace the value at a drawn path of the JSON document (or add a key) with a drawn value."""
    record = json.loads(text)
    node = record
    while isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or draw(st.booleans()):
            node[key] = draw(json_values)
            break
        node = node[key]
    return json.dumps(record)


def mutate_safetensors_header(data: bytes, draw) -> bytes:
    """Change one tensor's dtype, shape or offsets in the header, keeping the body."""
    (length,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + length]), data[8 + length:]
    name = draw(st.sampled_from(sorted(key for key in header if key != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    if field == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F16", "F64", "I32", "I64", "U8", "BOOL", "BF16", "X"]))
    else:
        header[name][field] = draw(st.lists(st.integers(min_value=0, max_value=2**40), min_size=0, max_size=3))
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def mutate_lines(text: str, draw) -> str:
    """Replace one line of a text file by a drawn one."""
    lines = text.split("\n")
    index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
    lines[index] = draw(st.one_of(st.text(max_size=20), st.sampled_from(["merges 99999999999", '"(a)|b"', "97 97",
                                                                         "special_tokens 1", "-1 5", '""'])))
    return "\n".join(lines)


def mutate(name: str, data: bytes, draw) -> bytes:
    """One drawn mutation of the file `name` whose bytes are `data`."""
    kinds = ["bytes"] + (["json"] if name.endswith(".json") else []) + \
        (["header"] if name.endswith(".safetensors") else []) + (["lines"] if name.endswith(".model") else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return mutate_bytes(data, draw)
    if kind == "json":
        return mutate_json(data.decode(), draw).encode()
    if kind == "header":
        return mutate_safetensors_header(data, draw)
    return mutate_lines(data.decode(), draw).encode()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_checkpoint_samples_or_fails_with_one_line(checkpoint, data):
    name = data.draw(st.sampled_from(FILES))
    with tempfile.TemporaryDirectory() as directory:
        out_dir = Path(directory) / "out"
        shutil.copytree(checkpoint, out_dir)
        path = out_dir / "ckpt" / name
        path.write_bytes(mutate(name, path.read_bytes(), data.draw))
        try:
            result = run_capped(["sample", "--out-dir", str(out_dir), "--max-new-tokens", "3"], timeout=SECONDS_PER_RUN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sample ran past {SECONDS_PER_RUN} s after mutating {name}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("tinygpt: error: ")]
    assert "Traceback" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
    assert result.returncode == 0 or (result.returncode == 1 and len(errors) == 1), f"{name}: {result.stderr[-2000:]}"
