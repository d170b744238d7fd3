"""The frictions a newcomer meets in a first hour with `tinygpt`: each one, as they would meet it."""
import os
import re
import signal
import time
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_FLAGS
from tinygpt.cli import main


TINY = [*TINY_TRAIN_FLAGS, "--sample-tokens", "60"]


def tinygpt(workspace: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    return subprocess.run([sys.executable, "-m", "tinygpt", *args], capture_output=True, text=True, cwd=workspace,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "trained", "--max-iters", "4", *TINY)
    assert result.returncode == 0, result.stderr
    return workspace / "trained"


def control_characters(text: str) -> set[str]:
    return {char for char in text if (ord(char) < 32 or 127 <= ord(char) < 160) and char not in "\n\t"}


def test_printable_escapes_control_characters_and_keeps_newlines_and_tabs():
    from tinygpt.sampling import printable

    assert printable("a\x1b[2Jb\x07c\nd\te\r\x7f\x85é") == "a\\x1b[2Jb\\x07c\nd\te\\r\\x7f\\x85é"
    assert printable("plain text\n") == "plain text\n"


def test_the_sample_train_prints_shows_control_bytes_escaped(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "escaped", "--max-iters", "4", *TINY)
    assert result.returncode == 0, result.stderr
    sample = result.stdout.split("---- sample ----\n")[1]
    assert not control_characters(sample)
    assert re.search(r"\\x[0-9a-f]{2}", sample)  # a barely trained byte model does draw control bytes


@pytest.mark.parametrize("flag, value", [("--temperature", "-1"), ("--temperature", "nan"), ("--top-k", "-1"),
                                         ("--max-new-tokens", "-1"), ("--num-samples", "0"), ("--seed", "-1"),
                                         ("--top-p", "0")])
def test_a_wrong_sample_argument_is_one_line_naming_it_alone(flag, value, capsys):
    assert main(["sample", "--out-dir", "nowhere", flag, value]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and flag in error
    others = {"--temperature", "--top-k", "--max-new-tokens", "--num-samples", "--seed", "--top-p"} - {flag}
    assert not [other for other in others if other in error], error


def tiny_config(workspace: Path, out_dir: str, **settings):
    from tinygpt.train import TrainConfig

    flat = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "batch_size": 4, "eval_interval": 2,
            "eval_iters": 2, "warmup_iters": 1, "max_iters": 2, "sample_tokens": 0,
            "data": str(workspace / "corpus.txt"), "out_dir": str(workspace / out_dir)}
    return TrainConfig.from_settings(flat | settings)


def test_an_error_of_the_python_api_names_the_trainconfig_fields_not_flags(trained, workspace):
    from tinygpt.train import ConfigError, train

    with pytest.raises(ConfigError) as refused:
        train(tiny_config(workspace, "trained"), verbose=False)
    assert "resume=True" in str(refused.value) and "overwrite=True" in str(refused.value)
    assert "--" not in str(refused.value)
    with pytest.raises(ConfigError) as beyond:
        train(tiny_config(workspace, "trained", resume=True, max_iters=1), verbose=False)
    assert "max_iters" in str(beyond.value) and "--" not in str(beyond.value)


def test_export_refuses_a_folder_that_holds_files_unless_overwrite(trained, workspace):
    target = workspace / "hf-taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    refused = tinygpt(workspace, "export", "--out-dir", "trained", "--to", "hf-taken")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "tinygpt: error:" in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(path.name for path in target.iterdir()) == ["notes.txt"]
    replaced = tinygpt(workspace, "export", "--out-dir", "trained", "--to", "hf-taken", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    (workspace / "hf-empty").mkdir()
    assert tinygpt(workspace, "export", "--out-dir", "trained", "--to", "hf-empty").returncode == 0


def test_a_failed_train_leaves_no_out_dir_behind(workspace):
    (workspace / "short.txt").write_text("To be, or not to be, that is the question.\n")
    result = tinygpt(workspace, "train", "--data", "short.txt", "--out-dir", "failed-run", *TINY, "--block-size", "64")
    assert result.returncode == 1 and "too short for block size 64" in result.stderr
    assert not (workspace / "failed-run").exists()
    (workspace / "given-empty").mkdir()  # a folder the user made stays
    result = tinygpt(workspace, "train", "--data", "short.txt", "--out-dir", "given-empty", *TINY, "--block-size", "64")
    assert result.returncode == 1 and (workspace / "given-empty").is_dir()


def test_sample_pointed_at_the_checkpoint_folder_names_the_run_folder(trained, workspace):
    result = tinygpt(workspace, "sample", "--out-dir", "trained/ckpt", "--max-new-tokens", "5")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--out-dir trained" in result.stderr.replace("--out-dir trained/ckpt", "")
    assert "train one with" not in result.stderr


def test_a_tokenizer_prefix_for_its_model_file_suggests_the_file(workspace):
    trained = tinygpt(workspace, "tokenizer", "train", "--data", "corpus.txt", "--vocab-size", "260", "--out", "bpe")
    assert trained.returncode == 0, trained.stderr
    result = tinygpt(workspace, "tokenizer", "encode", "--model", "bpe", "--text", "hi")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "did you mean --model bpe.model" in result.stderr


def test_a_loss_far_above_the_uniform_guess_is_warned_of_once(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "diverging", *TINY, "--max-iters", "30",
                     "--eval-interval", "10", "--learning-rate", "10")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("tinygpt: warning: ") and "ln(256) = 5.55" in warnings[0]
    assert "--learning-rate" in warnings[0]


def test_a_healthy_run_has_no_such_warning(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "healthy", *TINY, "--max-iters", "30",
                     "--eval-interval", "10")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_bench_reports_each_round_as_it_ends(workspace):
    process = subprocess.Popen([sys.executable, "-m", "tinygpt", "bench", "--config", "tiny", "--steps", "1",
                                "--warmup", "0", "--rounds", "3"], stdout=subprocess.PIPE, text=True, cwd=workspace,
                               start_new_session=True)  # its workers too are ended below
    try:
        lines = []
        while not lines or "round 1/3" not in lines[-1]:
            lines.append(process.stdout.readline())
            assert lines[-1], "bench ended before reporting its first round"
        assert process.poll() is None  # the first round is reported while the others still run
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def bench_without_torch(workspace: Path, package_root: str | None) -> subprocess.CompletedProcess:
    """tinygpt bench where `import torch` fails; package_root stands in for where tinygpt is installed."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tinygpt import bench\n"
            + (f"bench.PACKAGE_ROOT = __import__('pathlib').Path({package_root!r})\n" if package_root else "")
            + "from tinygpt.cli import main; sys.exit(main(['bench', '--quick']))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workspace, timeout=120)


def test_bench_without_pytorch_is_one_error_line_with_advice_that_fits(workspace, tmp_path):
    checkout = Path(__file__).resolve().parent.parent  # tinygpt as an editable install of this checkout has it
    from_checkout = bench_without_torch(workspace, str(checkout / "src" / "tinygpt"))  # (CI installs it: not so)
    assert from_checkout.returncode == 1 and len(from_checkout.stderr.strip().splitlines()) == 1
    assert from_checkout.stderr.startswith("tinygpt: error: ")
    assert f'pip install "{checkout}[test]"' in from_checkout.stderr and "tinygpt[test]" not in from_checkout.stderr
    installed = bench_without_torch(workspace, str(tmp_path / "site-packages"))
    assert installed.stderr.startswith("tinygpt: error: ") and "pip install torch" in installed.stderr


def demo_records() -> list[dict]:
    """A run's metrics as a fast-learning run writes them: the batch loss falls well before the second evaluation."""
    steps = [{"type": "train", "iter": i, "loss": 1.5 + 4.0 / (1 + i / 10)} for i in range(0, 500, 10)]
    evals = [{"type": "eval", "iter": i, "train_loss": 1.5 + 4.0 / (1 + i / 10), "val_loss": 1.6 + 4.0 / (1 + i / 10)}
             for i in (0, 250, 500)]
    return steps + evals


def test_the_loss_plot_reads_as_a_report_figure():
    from tinygpt.metrics import loss_figure

    figure = loss_figure(demo_records(), final=(500, 1.71))
    axes = figure.axes[0]
    assert axes.get_title()
    figure.canvas.draw()
    labels = [label.get_text() for label in axes.get_yticklabels() + axes.get_yticklabels(minor=True) if label.get_text()]
    assert labels and all(re.fullmatch(r"\d+(\.\d+)?", label) for label in labels), labels  # "2", not "2x10^0"
    evaluations = [line for line in axes.get_lines() if "(eval)" in line.get_label()]
    assert evaluations and all(line.get_linestyle() == "None" and line.get_marker() not in (None, "None")
                               for line in evaluations)  # sparse evaluations as points, not lines across the curve
    final = [line for line in axes.get_lines() if "whole" in line.get_label()]
    assert final and list(final[0].get_xdata()) == [500] and list(final[0].get_ydata()) == [1.71]
    assert "1.71" in final[0].get_label()


def test_an_interrupted_run_leaves_its_loss_plot(workspace):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    running = subprocess.Popen([sys.executable, "-m", "tinygpt", "train", "--data", "corpus.txt", "--out-dir", "stopped",
                                *TINY_TRAIN_FLAGS, "--max-iters", "100000", "--eval-interval", "100000",
                                "--log-interval", "1", "--sample-tokens", "0"],
                               cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workspace / "stopped" / "metrics.jsonl"
    try:
        for _ in range(6000):
            if metrics.exists() and metrics.read_text().count('"train"') >= 5:
                break
            time.sleep(0.02)
        running.send_signal(signal.SIGTERM)
        stdout, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 130, stderr
    plot = workspace / "stopped" / "loss.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(plot.parent.glob(".loss.png.*"))  # written beside, then renamed: no temporary left


def test_the_export_has_one_end_of_text_id_inside_the_vocabulary_and_transformers_generates(trained, workspace):
    transformers = pytest.importorskip("transformers", reason="transformers loads the export")
    torch = pytest.importorskip("torch", reason="transformers runs on torch")
    import json

    from tinygpt import Tensor
    from tinygpt.checkpoint import load_checkpoint

    result = tinygpt(workspace, "export", "--out-dir", "trained", "--to", "hf-generate")
    assert result.returncode == 0, result.stderr
    folder = workspace / "hf-generate"
    config = json.loads((folder / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert all(0 <= index < config["vocab_size"] for index in tokenizer.all_special_ids), tokenizer.all_special_ids
    assert tokenizer.eos_token_id == config["eos_token_id"] and len(tokenizer) <= config["vocab_size"]
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = tokenizer("ROMEO", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    ours = load_checkpoint(trained).load_model().generate(Tensor(ids.numpy()), max_new_tokens=3, temperature=0.0)
    assert theirs.tolist() == ours.numpy().tolist()


def test_init_from_says_in_one_line_what_it_builds(trained, workspace):
    exported = tinygpt(workspace, "export", "--out-dir", "trained", "--to", "hf-source")
    assert exported.returncode == 0, exported.stderr
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--init-from", "hf-source", "--out-dir", "from-hf",
                     *TINY, "--max-iters", "2", "--sample-tokens", "0")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("starting from hf-source"))
    assert "1 layer" in line and "2 heads" in line and "width 16" in line and "with biases" in line
    assert re.search(r"[\d,]+ parameters", line)


def test_the_done_line_gives_the_steps_time_and_rate_and_the_whole_time_apart(workspace):
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "done-line", *TINY, "--max-iters", "4")
    assert result.returncode == 0, result.stderr
    done = next(line for line in result.stdout.splitlines() if line.startswith("done: "))
    parts = re.match(r"done: 4 iterations, ([\d.]+) s of training steps at ([\d,]+) tokens/s, ([\d.]+) s in all \(", done)
    assert parts, done
    assert float(parts.group(1)) <= float(parts.group(3))
