"""The `tinygpt` command, run as a user runs it: a subprocess, exit status, stdout and stderr."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinygpt.dataset import default_corpus_path
from tinygpt.tokenizer import BPETokenizer

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
        "--eval-interval", "2", "--eval-iters", "2", "--warmup-iters", "1", "--sample-tokens", "20"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory with a small corpus (the head of Tiny Shakespeare) and a shared token cache."""
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_text(default_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return root


def tinygpt(workspace: Path, *args: str, stdin: str | None = None, module: str = "tinygpt") -> subprocess.CompletedProcess:
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
                          cwd=workspace, env=env, timeout=180)


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """The out dir of a tiny model trained for 4 iterations."""
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "trained", "--max-iters", "4", *TINY)
    assert result.returncode == 0, result.stderr
    return workspace / "trained"


def test_train_reports_losses_bits_per_byte_speed_and_a_sample(trained, workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "again", "--max-iters", "4", *TINY)
    assert result.returncode == 0, result.stderr
    assert "iter 4: train loss" in result.stdout and "bits/byte" in result.stdout
    assert "tokens/s" in result.stdout and "---- sample ----" in result.stdout
    assert "tok/s" in result.stderr and "lr" in result.stderr  # the progress bar
    assert (trained / "ckpt" / "weights.safetensors").is_file()


def test_python_dash_m_tinygpt_and_tinygpt_cli_both_run(workspace):
    for module in ("tinygpt", "tinygpt.cli"):
        result = tinygpt(workspace, "--help", module=module)
        assert result.returncode == 0 and "train" in result.stdout and "tokenizer" in result.stdout


def test_console_script_is_installed(workspace):
    script = Path(sys.executable).parent / "tinygpt"  # the one installed next to this interpreter
    if not script.is_file():
        pytest.skip("the tinygpt console script is not installed (pip install -e .)")
    result = subprocess.run([script, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--lr-decay-iters" in result.stdout and "--preset" in result.stdout


def test_no_arguments_prints_help(workspace):
    result = tinygpt(workspace)
    assert result.returncode == 2 and "train" in result.stderr


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(workspace):
    flags = ["--data", "corpus.txt", "--dropout", "0.1", "--lr-decay-iters", "6", *TINY]
    assert tinygpt(workspace, "train", "--out-dir", "whole", "--max-iters", "6", *flags).returncode == 0
    assert tinygpt(workspace, "train", "--out-dir", "split", "--max-iters", "3", *flags).returncode == 0
    resumed = tinygpt(workspace, "train", "--out-dir", "split", "--max-iters", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "iterations 3 -> 6" in resumed.stdout

    def history(out_dir: str) -> dict:
        return json.loads((workspace / out_dir / "ckpt" / "state.json").read_text())["history"]
    split, whole = history("split"), history("whole")
    for key in ("iterations", "losses", "learning_rates"):
        assert split[key] == whole[key]
    assert [record for record in split["evals"] if record["iteration"] != 3] == whole["evals"]  # + the one at 3
    assert (workspace / "split" / "ckpt" / "weights.safetensors").read_bytes() == \
        (workspace / "whole" / "ckpt" / "weights.safetensors").read_bytes()


def test_sample_continues_the_prompt_and_is_reproducible(trained, workspace):
    args = ["sample", "--out-dir", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "7"]
    first, second = tinygpt(workspace, *args), tinygpt(workspace, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:") and first.stdout == second.stdout
    greedy = tinygpt(workspace, *args, "--temperature", "0", "--num-samples", "2")
    assert greedy.returncode == 0 and greedy.stdout.count("ROMEO:") == 2


def test_tokenizer_train_encode_decode_round_trip(workspace):
    trained = tinygpt(workspace, "tokenizer", "train", "--data", "corpus.txt", "--vocab-size", "300",
                      "--pattern", "gpt2", "--out", "bpe")
    assert trained.returncode == 0, trained.stderr
    assert "44 merges" in trained.stdout and (workspace / "bpe.model").is_file() and (workspace / "bpe.vocab").is_file()
    text = "First Citizen:\nBefore we proceed any further, hear me speak. é"
    encoded = tinygpt(workspace, "tokenizer", "encode", "--model", "bpe.model", "--text", text)
    ids = encoded.stdout.split()
    assert encoded.returncode == 0 and len(ids) < len(text.encode("utf-8"))
    assert tinygpt(workspace, "tokenizer", "encode", "--model", "bpe.model", stdin=text).stdout.split() == ids
    decoded = tinygpt(workspace, "tokenizer", "decode", "--model", "bpe.model", *ids)
    assert decoded.returncode == 0 and decoded.stdout == text + "\n"
    assert tinygpt(workspace, "tokenizer", "decode", "--model", "bpe.model", stdin=" ".join(ids)).stdout == text + "\n"


def test_train_with_a_larger_vocab_saves_its_tokenizer(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "bpe-run", "--vocab-size", "300",
                     "--max-iters", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert (workspace / "bpe-run" / "tokenizer.model").is_file()
    assert (workspace / "bpe-run" / "ckpt" / "tokenizer.model").read_text() == \
        (workspace / "bpe-run" / "tokenizer.model").read_text()


def corrupt_copy(trained: Path, workspace: Path, name: str) -> str:
    target = workspace / f"corrupt-{name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(trained, target)
    file = target / "ckpt" / name
    file.write_bytes(file.read_bytes()[:40])
    return target.name


BAD_INPUTS = {
    "missing data file": (["train", "--data", "no-such-file.txt"], "does not exist"),
    "empty data file": (["train", "--data", "empty.txt"], "is empty"),
    "block size larger than the data": (["train", "--data", "short.txt", "--block-size", "64"], "too short for block size 64"),
    "unknown preset": (["train", "--preset", "shakespeare-word"], "unknown preset 'shakespeare-word'"),
    "other architecture on resume": (["train", "--out-dir", "{trained}", "--resume", "--n-embd", "32"],
                                     "n_embd=16 but this run asks for n_embd=32"),
    "resume without a checkpoint": (["train", "--out-dir", "nothing-here", "--resume"], "no checkpoint in nothing-here"),
    "sample without a checkpoint": (["sample", "--out-dir", "nothing-here"], "no checkpoint in nothing-here"),
    "corrupt weights": (["sample", "--out-dir", "{corrupt:weights.safetensors}"], "not a valid safetensors file"),
    "corrupt config": (["train", "--resume", "--out-dir", "{corrupt:config.json}"], "cannot read config.json"),
    "corrupt optimizer state": (["train", "--resume", "--max-iters", "6", "--out-dir", "{corrupt:optimizer.safetensors}"],
                                "corrupt checkpoint"),
    "corrupt tokenizer": (["sample", "--out-dir", "{corrupt:tokenizer.model}"], "corrupt checkpoint"),
    "non-UTF-8 data": (["train", "--data", "binary.txt"], "not UTF-8 text"),
    "missing tokenizer model": (["tokenizer", "encode", "--model", "none.model", "--text", "hi"], "does not exist"),
    "foreign tokenizer model": (["tokenizer", "decode", "--model", "corpus.txt", "1"], "not a TinyGPT BPE model file"),
    "non-integer ids": (["tokenizer", "decode", "--model", "{trained}/ckpt/tokenizer.model", "1", "two"], "must be integers"),
    "bad flag value": (["train", "--n-layer", "two"], "invalid int value"),
    "bad pattern": (["tokenizer", "train", "--pattern", "gpt3"], "invalid choice"),
    "resume beyond --max-iters": (["train", "--out-dir", "{trained}", "--resume", "--max-iters", "2"],
                                  "beyond --max-iters 2"),
    "negative learning rate": (["train", "--learning-rate", "-1"], "learning_rate must be >= 0"),
    "bench with no rounds": (["bench", "--rounds", "0"], "--rounds must be at least 1"),
    "top-p outside (0, 1]": (["sample", "--out-dir", "{trained}", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "missing prompt file": (["sample", "--out-dir", "{trained}", "--start", "FILE:none.txt"], "cannot read the prompt file"),
    "init from nothing": (["train", "--init-from", "nothing-here"], "neither a TinyGPT checkpoint"),
    "export without a checkpoint": (["export", "--out-dir", "nothing-here", "--to", "hf"], "no checkpoint in nothing-here"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_ends_with_one_line_on_stderr(case, trained, workspace):
    (workspace / "empty.txt").write_text("")
    (workspace / "short.txt").write_text("To be, or not to be, that is the question.\n")
    (workspace / "binary.txt").write_bytes(b"\xff\xfe\x00 not text")
    args, message = BAD_INPUTS[case]
    args = [arg.replace("{trained}", str(trained)) for arg in args]
    args = [corrupt_copy(trained, workspace, arg[len("{corrupt:"):-1]) if arg.startswith("{corrupt:") else arg
            for arg in args]
    tiny = TINY if args[0] == "train" and "--resume" not in args else []
    result = tinygpt(workspace, args[0], *tiny, *args[1:])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("tinygpt") and message in result.stderr


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_non_utf8_stdin_is_one_line_naming_the_byte(command, workspace):
    BPETokenizer().save(workspace / "plain")
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    result = subprocess.run([sys.executable, "-m", "tinygpt", "tokenizer", command, "--model", "plain.model"],
                            input=b"\xff\xfe", capture_output=True, cwd=workspace, env=env, timeout=180)
    stderr = result.stderr.decode("utf-8")
    assert result.returncode != 0
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("tinygpt: error: stdin is not UTF-8 text") and "at byte 0" in stderr


def test_cuda_without_cupy_is_one_clear_line(workspace):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: --device cuda is available here")
    except ImportError:
        pass
    for command in (["train", "--device", "cuda"], ["sample", "--device", "cuda"]):
        result = tinygpt(workspace, *command)
        assert result.returncode == 1 and result.stderr.strip() == \
            "tinygpt: error: device 'cuda' needs CuPy: pip install 'tinygpt[cuda]'"


def test_sample_start_file_is_the_prompt_of_that_file(trained, workspace):
    (workspace / "prompt.txt").write_text("ROMEO:\nBut soft", encoding="utf-8")
    common = ["sample", "--out-dir", str(trained), "--max-new-tokens", "20", "--seed", "3"]
    from_file = tinygpt(workspace, *common, "--start", "FILE:prompt.txt")
    inline = tinygpt(workspace, *common, "--prompt", "ROMEO:\nBut soft")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == inline.stdout and from_file.stdout.startswith("ROMEO:\nBut soft")


def test_sample_with_a_tiny_top_p_is_greedy(trained, workspace):
    common = ["sample", "--out-dir", str(trained), "--prompt", "KING", "--max-new-tokens", "25"]
    nucleus = tinygpt(workspace, *common, "--top-p", "1e-9", "--temperature", "1.0")
    greedy = tinygpt(workspace, *common, "--temperature", "0")
    assert nucleus.returncode == 0, nucleus.stderr
    assert nucleus.stdout == greedy.stdout


def test_sample_prints_text_before_generation_ends(trained, workspace):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    process = subprocess.Popen([sys.executable, "-m", "tinygpt", "sample", "--out-dir", str(trained), "--prompt",
                                "HAMLET:", "--max-new-tokens", "100000"], stdout=subprocess.PIPE, cwd=workspace, env=env)
    try:
        first = process.stdout.read(len("HAMLET:"))
        assert first == b"HAMLET:" and process.poll() is None  # the prompt came while tokens are still being made
    finally:
        process.kill()
        process.wait()


def test_export_writes_a_directory_transformers_loads_with_our_logits_and_ids(trained, workspace):
    transformers = pytest.importorskip("transformers", reason="transformers loads the export")
    torch = pytest.importorskip("torch", reason="transformers runs on torch")
    from tinygpt import Tensor
    from tinygpt.checkpoint import load_checkpoint

    result = tinygpt(workspace, "export", "--out-dir", str(trained), "--to", "hf-export")
    assert result.returncode == 0, result.stderr
    assert "tokenizer.json" in result.stdout
    checkpoint = load_checkpoint(trained)
    ours = checkpoint.load_model()
    text = "ROMEO:\nO"  # no longer than the block size of 8
    ids = checkpoint.tokenizer.encode(text)
    assert transformers.AutoTokenizer.from_pretrained(workspace / "hf-export")(text)["input_ids"] == ids
    model = transformers.GPT2LMHeadModel.from_pretrained(workspace / "hf-export").eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits.numpy()
    np = pytest.importorskip("numpy")
    np.testing.assert_allclose(ours(Tensor([ids])).numpy(), expected, rtol=0, atol=1e-4)

