"""A run's files stay its own: a second run into the same out dir, an export onto the checkpoint, --overwrite
killed early, a torn metrics line or a short training split never lose a run or end in a traceback (the `tinygpt`
command as a subprocess under a memory cap and a timeout)."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MEMORY_CAP_BYTES, assert_one_line_error, run_capped
from test_hostile_checkpoints import TINY, copy, resume, tinygpt, trained  # noqa: F401 (the fixtures)


def start_training(workspace: Path, *args: str) -> subprocess.Popen:
    """`tinygpt train *args` started in the background (under the same memory cap), returned once it trains."""
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    log = workspace / "background.stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tinygpt", "train", *args], cwd=workspace, env=env,
                                   stderr=stderr, stdout=subprocess.DEVNULL, preexec_fn=lambda: resource.setrlimit(
                                       resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES)))
    deadline = time.monotonic() + 120
    while "iter " not in log.read_text():  # a progress line: the loop runs
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


# ---- two runs, one out dir ---------------------------------------------------------------------------

def test_a_second_run_into_an_out_dir_in_use_is_refused_and_the_lock_dies_with_the_first(workspace, copy):
    first = start_training(workspace, "--data", "corpus.txt", "--out-dir", str(copy), "--resume", "--max-iters",
                           "100000", "--eval-interval", "100000")
    try:
        second = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), "--overwrite", *TINY,
                         "--max-iters", "2")
        assert_one_line_error(second, str(copy), "in use")
    finally:
        first.kill()
        first.wait()
    after = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), "--overwrite", *TINY,
                    "--max-iters", "2")
    assert after.returncode == 0, after.stderr


def test_a_save_never_deletes_the_staging_directory_of_a_live_process(workspace, copy):
    live = subprocess.Popen(["sleep", "300"])
    try:
        staged = copy / f"ckpt.tmp-{live.pid}-staged"
        staged.mkdir()
        result = resume(workspace, copy)
        assert result.returncode == 0, result.stderr
        assert staged.is_dir()
    finally:
        live.kill()
        live.wait()


# ---- export ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["ckpt", "ckpt.old"])
def test_export_refuses_to_write_into_a_checkpoint(workspace, copy, target):
    if target == "ckpt.old":
        (copy / "ckpt").rename(copy / "ckpt.old")
    before = files_of(copy)
    result = tinygpt(workspace, "export", "--out-dir", str(copy), "--to", str(copy / target))
    assert_one_line_error(result, "checkpoint")
    assert files_of(copy) == before


# ---- --overwrite -----------------------------------------------------------------------------------

def test_overwrite_killed_before_its_first_checkpoint_leaves_the_old_run_whole(workspace, copy):
    before = {name: data for name, data in files_of(copy).items() if not name.startswith(".")}
    replacing = start_training(workspace, "--data", "corpus.txt", "--out-dir", str(copy), "--overwrite", *TINY,
                               "--max-iters", "100000", "--eval-interval", "100000")
    replacing.send_signal(signal.SIGKILL)
    replacing.wait()
    assert {name: data for name, data in files_of(copy).items() if not name.startswith(".")} == before
    assert resume(workspace, copy).returncode == 0


def test_overwrite_removes_the_replaced_runs_pictures_once_its_first_checkpoint_lands(workspace):
    first = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "pictures", *TINY, "--max-iters", "2",
                    "--log-stats", "--tensorboard")
    assert first.returncode == 0 and (workspace / "pictures" / "stats.png").is_file(), first.stderr
    assert len(list((workspace / "pictures" / "tensorboard").iterdir())) == 1
    second = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", "pictures", "--overwrite", *TINY,
                     "--max-iters", "2", "--tensorboard")
    assert second.returncode == 0, second.stderr
    assert not (workspace / "pictures" / "stats.png").exists()  # the statistics of a run that is gone
    assert len(list((workspace / "pictures" / "tensorboard").iterdir())) == 1  # its events too: only the new run's


# ---- metrics.jsonl ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(workspace, copy, flag):
    with open(copy / "metrics.jsonl", "a") as metrics:
        metrics.write('{"type": "train", "iter": 4, "lo')
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), flag, *TINY, "--max-iters", "6")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if flag == "--resume":
        assert "metrics.jsonl" in result.stderr and "torn" in result.stderr
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines)


def test_a_damaged_metrics_line_before_the_last_is_one_line(workspace, copy):
    lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[0] = "not json\n"
    (copy / "metrics.jsonl").write_text("".join(lines))
    assert_one_line_error(resume(workspace, copy), "metrics.jsonl", "line 1")


# ---- data --------------------------------------------------------------------------------------------

def test_a_training_split_shorter_than_a_block_is_one_line(workspace):
    (workspace / "short.txt").write_text("tiny")
    result = tinygpt(workspace, "train", "--data", "short.txt", "--val-data", "corpus.txt", "--out-dir", "never",
                     *TINY, "--max-iters", "2")
    assert_one_line_error(result, "short.txt", "block size")


# ---- signals and a closed stdout -----------------------------------------------------------------------

def test_sigterm_saves_a_checkpoint_as_ctrl_c_does(workspace, copy):
    iteration = lambda: __import__("json").loads((copy / "ckpt" / "state.json").read_text())["iteration"]  # noqa: E731
    before = iteration()
    run = start_training(workspace, "--data", "corpus.txt", "--out-dir", str(copy), "--resume", "--max-iters",
                         "100000", "--eval-interval", "100000")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 130
    assert "checkpoint saved" in (workspace / "background.stderr").read_text()
    assert iteration() > before


def test_sigterm_while_tokenising_leaves_no_temporary_file(workspace):
    text = (workspace / "corpus.txt").read_text(encoding="utf-8")
    (workspace / "big.txt").write_text(text * 400, encoding="utf-8")
    cache = workspace / "sigterm-cache"
    env = os.environ | {"TINYGPT_CACHE_DIR": str(cache)}
    run = subprocess.Popen([sys.executable, "-m", "tinygpt", "train", "--data", "big.txt", "--out-dir", "never", *TINY],
                           cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(path.name.endswith(".tmp") for path in cache.iterdir())):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "Traceback" not in stderr, stderr
    assert not [path.name for path in cache.iterdir() if path.name.endswith(".tmp")]


def test_closing_stdout_ends_sample_quietly(workspace, trained):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    run = subprocess.Popen([sys.executable, "-m", "tinygpt", "sample", "--out-dir", str(trained), "--max-new-tokens",
                            "100000"], cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.read(10)
    run.stdout.close()
    stderr = run.stderr.read().decode()
    run.wait(timeout=120)
    assert stderr == ""


# ---- a checkpoint's files belong together ---------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(workspace) -> tuple[Path, Path]:
    """Two runs of the same architecture and vocabulary size on two texts: each one's files fit the other's shapes."""
    (workspace / "other.txt").write_text((workspace / "corpus.txt").read_text()[::-1])
    for name, data in (("run-a", "corpus.txt"), ("run-b", "other.txt")):
        result = tinygpt(workspace, "train", "--data", data, "--out-dir", name, "--max-iters", "4", *TINY,
                         "--vocab-size", "260")
        assert result.returncode == 0, result.stderr
    return workspace / "run-a", workspace / "run-b"


@pytest.mark.parametrize("name", ["tokenizer.model", "optimizer.safetensors", "weights.safetensors"])
def test_a_file_of_another_run_in_a_checkpoint_is_refused(workspace, two_runs, name):
    mixed = workspace / f"mixed-{name}"
    shutil.copytree(two_runs[0], mixed)
    (mixed / "ckpt" / name).write_bytes((two_runs[1] / "ckpt" / name).read_bytes())  # valid, of the same shapes
    assert_one_line_error(resume(workspace, mixed), "corrupt checkpoint", name)


def test_the_data_of_a_run_is_found_from_any_directory_and_a_changed_file_is_refused(workspace, trained, tmp_path):
    (tmp_path / "corpus.txt").write_text("another text of the same name " * 200)
    result = run_in(tmp_path, workspace, "eval", "--out-dir", str(trained))
    assert result.returncode == 0, result.stderr
    assert str(workspace / "corpus.txt") in result.stdout
    changed = workspace / "changed"
    shutil.copytree(trained, changed)
    saved = (workspace / "corpus.txt").read_bytes()
    try:
        (workspace / "corpus.txt").write_bytes(saved + b"one more line\n")
        assert_one_line_error(run_in(tmp_path, workspace, "eval", "--out-dir", str(changed)), "corpus.txt", "changed")
        assert_one_line_error(resume(workspace, changed), "corpus.txt", "changed")
    finally:
        (workspace / "corpus.txt").write_bytes(saved)


def run_in(directory: Path, workspace: Path, *args: str):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    return run_capped(list(args), cwd=directory, env=env, timeout=180)


def test_a_checkpoint_directory_that_is_a_symlink_survives_later_saves(workspace, copy):
    elsewhere = workspace / f"elsewhere-{copy.name}"
    (copy / "ckpt").rename(elsewhere)
    (copy / "ckpt").symlink_to(elsewhere)
    result = tinygpt(workspace, "train", "--data", "corpus.txt", "--out-dir", str(copy), "--resume", "--max-iters", "8")
    assert result.returncode == 0, result.stderr
    assert tinygpt(workspace, "sample", "--out-dir", str(copy), "--max-new-tokens", "2").returncode == 0


def test_a_full_disk_under_stderr_does_not_stop_training(workspace):
    env = os.environ | {"TINYGPT_CACHE_DIR": str(workspace / "token-cache")}
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "tinygpt", "train", "--data", "corpus.txt", "--out-dir",
                                 "full-stderr", *TINY, "--max-iters", "4", "--log-interval", "1"], cwd=workspace,
                                env=env, stdout=subprocess.DEVNULL, stderr=full, timeout=180)
    assert result.returncode == 0
    assert (workspace / "full-stderr" / "ckpt" / "state.json").is_file()


def test_init_from_a_run_on_other_data_is_accepted_with_a_warning(workspace, two_runs):
    result = tinygpt(workspace, "train", "--data", "other.txt", "--init-from", str(two_runs[0]), "--out-dir",
                     "from-run-a", *TINY, "--vocab-size", "260", "--max-iters", "2")
    assert result.returncode == 0, result.stderr
    assert "other data" in result.stderr and "corpus.txt" in result.stderr
