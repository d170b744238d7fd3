"""The `tinygpt` command, run as a user runs it: a subprocess, exit status, stdout and stderr."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_FLAGS
from tinygpt.dataset import default_corpus_path
from tinygpt.tokenizer import BPETokenizer

TINY = [*TINY_TRAIN_FLAGS, "--sample-tokens", "20"]


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
    "unknown preset": (["train", "--preset", "shakespeare-word"], "invalid choice: 'shakespeare-word'"),
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


def train_parser_options() -> set[str]:
    from tinygpt import cli

    parser = cli.build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command")
    return {option for action in subcommands.choices["train"]._actions for option in action.option_strings}


def test_every_setting_has_a_flag_in_both_spellings():
    from tinygpt.config import setting_schema

    options = train_parser_options()
    for setting in setting_schema():
        assert f"--{setting.name.replace('_', '-')}" in options and f"--{setting.name}" in options, setting.name
    assert {"--n-layer", "--n_layer", "--beta1", "--val-fraction", "--log-interval", "--gradient-accumulation-steps",
            "--val-data", "--overwrite", "--no-bias", "--config", "--preset"} <= options


def parse_train(*argv: str):
    from tinygpt import cli

    return cli.train_config(cli.build_parser().parse_args(["train", *argv]))


def test_nanogpt_spelling_equals_the_dashed_one():
    assert parse_train("--n_layer=2", "--block_size=32", "--beta1=0.8") == \
        parse_train("--n-layer", "2", "--block-size", "32", "--beta1", "0.8")
    assert parse_train("--n_layer=2").model.num_layers == 2


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_round_trips_and_flags_override_it(tmp_path, suffix):
    if suffix == ".toml" and sys.version_info < (3, 11):
        pytest.skip("TOML needs tomllib (Python 3.11+)")
    from tinygpt.config import TrainConfig

    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, beta1=0.85, val_fraction=0.2,
                    log_interval=5, gradient_accumulation_steps=3, learning_rate=3e-4, lr_decay_iters=500)
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings))
    else:
        path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    assert parse_train("--config", str(path)) == TrainConfig.from_settings(settings)
    overridden = parse_train("--config", str(path), "--n-layer", "3", "--no-bias")
    assert overridden == TrainConfig.from_settings(settings | dict(n_layer=3, bias=False))


@pytest.mark.parametrize("content, message", [
    ('{"n_layers": 2}', "unknown training settings ['n_layers']"),
    ('{"n_layer": "2"}', "n_layer must be int, got '2'"),
    ('[1, 2]', "expected a table of settings"),
    ('{"n_layer": 2', "is not valid JSON"),
])
def test_a_bad_config_file_is_one_line(workspace, content, message):
    (workspace / "bad.json").write_text(content)
    result = tinygpt(workspace, "train", "--config", "bad.json")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("tinygpt: error: config file bad.json") and message in result.stderr


def test_version_is_printed(workspace):
    import tinygpt as package

    result = tinygpt(workspace, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tinygpt {package.__version__}"


def test_eval_equals_the_whole_split_loss_the_trainer_printed(trained, workspace):
    training = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "evaluated", "--max-iters", "4", *TINY)
    assert training.returncode == 0, training.stderr
    printed = re.search(r"final val loss over ([\d,]+) .*?: (\d+\.\d+) \((\d+\.\d+) bits/byte\)", training.stdout)
    evaluated = tinygpt(workspace, "eval", "--out-dir", "evaluated")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"loss {printed[2]} ({printed[3]} bits/byte) over {printed[1]} tokens" in evaluated.stdout
    (workspace / "held-out.txt").write_text(default_corpus_path().read_text(encoding="utf-8")[60_000:61_000])
    on_file = tinygpt(workspace, "eval", "--out-dir", "evaluated", "--data", "held-out.txt")
    assert on_file.returncode == 0 and "over 992 tokens of held-out.txt" in on_file.stdout


def test_redirected_output_gets_plain_lines_not_carriage_returns(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "plain", "--max-iters", "4",
                     "--log-interval", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert re.findall(r"^iter (\d+): loss [\d.]+, lr [\d.e+-]+, [\d,]+ tok/s, MFU [\d.]+%$", result.stderr, re.M) == ["0", "2"]


SIGINT_FLAGS = ["--data", "corpus.txt", "--max-iters", "100", "--dropout", "0.1", "--log-interval", "1",
                "--eval-interval", "100", *TINY_TRAIN_FLAGS, "--sample-tokens", "0"]


def test_ctrl_c_saves_the_interrupted_iteration_and_resumes_to_an_uninterrupted_run(workspace):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    running = subprocess.Popen([sys.executable, "-m", "tinygpt", "train", "--out-dir", "interrupted", *SIGINT_FLAGS],
                               cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workspace / "interrupted" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or metrics.read_text().count('"train"') < 5):
        time.sleep(0.02)
    running.send_signal(signal.SIGINT)
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 130, stderr
    iteration = json.loads((workspace / "interrupted" / "ckpt" / "state.json").read_text())["iteration"]
    assert 5 <= iteration < 100
    assert stderr.strip().splitlines()[-1] == (f"tinygpt: interrupted at iteration {iteration}: checkpoint saved in "
                                               "interrupted/ckpt; continue it with: tinygpt train --out-dir interrupted "
                                               "--resume")
    resumed = tinygpt(workspace, "train", "--out-dir", "interrupted", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert tinygpt(workspace, "train", "--out-dir", "uninterrupted", *SIGINT_FLAGS).returncode == 0

    def history(out_dir: str) -> dict:
        return json.loads((workspace / out_dir / "ckpt" / "state.json").read_text())["history"]
    assert history("interrupted") == history("uninterrupted")


def test_train_refuses_a_directory_holding_a_checkpoint(trained, workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(trained), "--max-iters", "2", *TINY)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "already holds a checkpoint" in result.stderr and "--resume" in result.stderr
    assert json.loads((trained / "ckpt" / "state.json").read_text())["iteration"] == 4


@pytest.mark.parametrize("args", [["train", "--max-iter", "3"], ["sample", "--max-new", "3"], ["eval", "--out", "out"]])
def test_a_flag_is_never_taken_from_its_prefix(args):
    from tinygpt.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
