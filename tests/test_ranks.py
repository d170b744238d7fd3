"""`tinygpt train` and `tinygpt eval` use the cores by data: one single-threaded rank per core under MPI, the
recipe's global batch split among them (skipped, with the reason, where MPI cannot start)."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tinygpt.distributed import RANKS_VARIABLE, SPLIT_BATCH_VARIABLE, default_ranks, requested_ranks
from test_distributed import cli_args, corpus, mpi, tiny_run, without_launcher  # noqa: F401 (fixtures)

WATCHDOG_SECONDS = 180  # a run here takes a few seconds; this only ends a hang on a loaded machine


def tinygpt(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """`python -m tinygpt args` as a user starts it (no launcher around it), its output as text."""
    environment = {key: value for key, value in without_launcher(os.environ).items()
                   if key not in (RANKS_VARIABLE, SPLIT_BATCH_VARIABLE)}
    return subprocess.run([sys.executable, "-m", "tinygpt", *args], capture_output=True, text=True,
                          timeout=WATCHDOG_SECONDS, env=environment | {"TINYGPT_CACHE_DIR": str(tmp_path / "cache")} | env)


def step_losses(out_dir: Path) -> list[float]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if record["type"] == "train"]


def alone(settings: dict):
    """The same run in this process, as `train(config)` from Python does it."""
    from tinygpt.train import TrainConfig, train

    return train(TrainConfig.from_settings(settings), verbose=False)


@pytest.mark.parametrize("cores, batch_size, expected", [(2, 12, 2), (4, 6, 3), (8, 12, 6), (5, 7, 1), (1, 12, 1),
                                                         (16, 4, 4), (3, None, 3)])
def test_the_default_is_the_largest_divisor_of_the_batch_up_to_the_cores(cores, batch_size, expected):
    assert default_ranks(cores, batch_size) == expected


def test_ranks_that_do_not_split_the_batch_or_are_not_whole_numbers_are_refused(monkeypatch):
    monkeypatch.delenv(RANKS_VARIABLE, raising=False)
    assert requested_ranks(3, 12) == 3
    with pytest.raises(ValueError, match="--ranks 5 does not split --batch-size 12 into equal shares"):
        requested_ranks(5, 12)
    with pytest.raises(ValueError, match="--ranks must be at least 1"):
        requested_ranks(0, 12)
    monkeypatch.setenv(RANKS_VARIABLE, "two")
    with pytest.raises(ValueError, match=f"{RANKS_VARIABLE} must be a whole number, got 'two'"):
        requested_ranks(None, 12)
    monkeypatch.setenv(RANKS_VARIABLE, "4")
    assert requested_ranks(None, 12) == 4 and requested_ranks(2, 12) == 2  # the flag wins


def test_a_wrong_ranks_flag_is_one_line(tmp_path, corpus):
    result = tinygpt(["train", *cli_args(tiny_run(tmp_path / "out", corpus)), "--ranks", "3"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "tinygpt: error: --ranks 3 does not split --batch-size 4 into equal shares: choose a divisor of 4"]


def test_ranks_1_is_one_process_bit_for_bit(tmp_path, corpus):
    settings = tiny_run(tmp_path / "cli", corpus, log_interval=1)
    result = tinygpt(["train", *cli_args(settings), "--ranks", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 process x 1 thread, 4 sequences each" in result.stdout
    assert step_losses(tmp_path / "cli") == alone(settings | dict(out_dir=str(tmp_path / "py"))).history["losses"]


@pytest.mark.parametrize("how, optimizer", [("flag", "adamw"), ("environment", "adamw"), ("flag", "muon")])
def test_automatic_ranks_train_as_one_process_with_the_recipes_batch(mpi, tmp_path, corpus, how, optimizer):
    """2 ranks x 2 sequences = the recipe's batch of 4: every step's loss is one process's, up to float32
    reduction order (the mean of two equal shares' means is the mean of the whole batch). With Muon each rank
    orthogonalises half of every stack of matrices."""
    settings = tiny_run(tmp_path / "ranks", corpus, log_interval=1, optimizer=optimizer, n_layer=2)
    chosen = (["--ranks", "2"], {}) if how == "flag" else ([], {RANKS_VARIABLE: "2"})
    result = tinygpt(["train", *cli_args(settings), *chosen[0]], tmp_path, **chosen[1])
    assert result.returncode == 0, result.stderr
    assert "2 ranks x 1 thread, 2 sequences each" in result.stdout
    one = alone(settings | dict(out_dir=str(tmp_path / "one")))
    losses = step_losses(tmp_path / "ranks")
    assert len(losses) == 6
    assert losses == pytest.approx(one.history["losses"], rel=1e-5)
    final = re.search(r"final val loss over .*: (\d+\.\d+)", result.stdout)
    assert float(final.group(1)) == pytest.approx(one.final_eval["whole_val_loss"], abs=1e-4)


def test_the_sample_drawn_on_the_last_rank_is_the_one_rank_0s_weights_give(mpi, tmp_path, corpus):
    """With 2 ranks the last rank draws the closing sample (while rank 0 draws the plot); every rank holds the same
    weights, so it is the sample rank 0's checkpoint gives."""
    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.sampling import printable
    from tinygpt.train import TrainConfig, sample_text

    settings = tiny_run(tmp_path / "ranks", corpus, sample_tokens=30)
    result = tinygpt(["train", *cli_args(settings), "--ranks", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    printed = re.search(r"---- sample ----\n(.*)\n----------------", result.stdout, re.S).group(1)
    checkpoint = load_checkpoint(tmp_path / "ranks")
    expected = sample_text(checkpoint.load_model("cpu"), checkpoint.tokenizer, "\n", 30, temperature=0.8, top_k=200,
                           seed=TrainConfig.from_settings(settings).seed)
    assert printed == printable(expected) and len(expected) > 1


def test_eval_splits_the_windows_among_ranks_and_equals_one_process(mpi, tmp_path, corpus):
    settings = tiny_run(tmp_path / "out", corpus)
    assert tinygpt(["train", *cli_args(settings), "--ranks", "1"], tmp_path).returncode == 0
    one = tinygpt(["eval", "--out-dir", str(tmp_path / "out"), "--ranks", "1"], tmp_path)
    two = tinygpt(["eval", "--out-dir", str(tmp_path / "out"), "--ranks", "2"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert len(two.stdout.splitlines()) == 1  # rank 0 alone prints
    loss = lambda output: float(re.match(r"loss (\d+\.\d+)", output).group(1))  # noqa: E731
    assert loss(two.stdout) == pytest.approx(loss(one.stdout), abs=1e-4)


@pytest.mark.parametrize("problem, message", [
    (dict(data="no-such-file.txt"), "corpus file no-such-file.txt does not exist"),
    (dict(block_size=100_000), "too short for block size 100000"),
])
def test_bad_input_is_one_line_from_every_rank(mpi, tmp_path, corpus, problem, message):
    result = tinygpt(["train", *cli_args(tiny_run(tmp_path / "out", corpus) | problem), "--ranks", "2"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt: error: ") and message in lines[0], result.stderr


def start(args: list[str], tmp_path: Path, **env) -> subprocess.Popen:
    environment = {key: value for key, value in without_launcher(os.environ).items()
                   if key not in (RANKS_VARIABLE, SPLIT_BATCH_VARIABLE)}
    return subprocess.Popen([sys.executable, "-m", "tinygpt", *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=environment | {"TINYGPT_CACHE_DIR": str(tmp_path / "cache")} | env)


def read_until(process: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            break
    return lines


def ranks_running(marker: str) -> list[str]:
    """The command lines of processes still running with `marker` (the run's unique out-dir) in them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(entry.name) != os.getpid() and marker in command:
            found.append(command)
    return found


@contextlib.contextmanager
def endless_run(out_dir: Path, corpus: Path, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """`tinygpt train --ranks 2` of a run that would not end by itself, under a watchdog; killed at the end."""
    settings = tiny_run(out_dir, corpus, max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000, log_interval=1)
    process = start(["train", *cli_args(settings), "--ranks", "2"], tmp_path)
    watchdog = threading.Timer(WATCHDOG_SECONDS, process.kill)
    watchdog.start()
    try:
        yield process
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        process.stdout.close()


def test_ctrl_c_stops_every_rank_saves_once_and_resumes(mpi, tmp_path, corpus):
    out_dir = tmp_path / "out"
    with endless_run(out_dir, corpus, tmp_path) as process:
        lines = read_until(process, "iter 2:")
        process.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C: the foreground process is mpiexec
        output = "".join(lines) + process.communicate()[0]
    assert process.returncode == 130, output
    said = re.findall(r"tinygpt: interrupted at iteration (\d+): checkpoint saved in (.*); continue it with: (.*)", output)
    assert len(said) == 1 and "Traceback" not in output, output
    assert said[0][2] == f"tinygpt train --out-dir {out_dir} --resume"
    time.sleep(1)
    assert ranks_running(str(out_dir)) == []
    resumed = tinygpt(["train", "--out-dir", str(out_dir), "--resume", f"--max-iters={int(said[0][0]) + 2}",
                       "--ranks", "2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(step_losses(out_dir)) == int(said[0][0]) + 2


# Imported by every rank at start (PYTHONPATH): rank 1 fails at its third step.
FAIL_ON_RANK_1 = """
import os
import tinygpt.train as training
step, steps = training.train_step, []
def failing_step(*args, **kwargs):
    steps.append(1)
    if os.environ.get("PMI_RANK") == "1" and len(steps) == 3:
        raise RuntimeError("injected failure")
    return step(*args, **kwargs)
training.train_step = failing_step
"""


def test_an_error_on_one_rank_stops_every_rank_with_one_line(mpi, tmp_path, corpus):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    out_dir = tmp_path / "out"
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path / "inject"), os.environ.get("PYTHONPATH")]))
    result = tinygpt(["train", *cli_args(tiny_run(out_dir, corpus, max_iters=1000)), "--ranks", "2"], tmp_path,
                     PYTHONPATH=pythonpath)
    assert result.returncode != 0
    assert re.findall(r"tinygpt: .*", result.stderr) == ["tinygpt: error: rank 1 of 2: RuntimeError: injected failure"]
    assert "Traceback" not in result.stderr + result.stdout
    assert ranks_running(str(out_dir)) == []


def test_a_killed_launcher_leaves_no_rank_running(mpi, tmp_path, corpus):
    out_dir = tmp_path / "out"
    with endless_run(out_dir, corpus, tmp_path) as process:
        read_until(process, "iter 2:")
        assert len(ranks_running(str(out_dir))) >= 2  # the launcher and its ranks
        process.kill()  # SIGKILL: the launcher cannot clean anything up itself
        process.communicate()
        deadline = time.monotonic() + 30
        while ranks_running(str(out_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert ranks_running(str(out_dir)) == []


def test_without_mpi_one_warning_and_one_process(tmp_path, corpus):
    """Where mpi4py cannot be imported the command still trains, in one process, after one warning line."""
    (tmp_path / "nompi" / "mpi4py").mkdir(parents=True)
    (tmp_path / "nompi" / "mpi4py" / "__init__.py").write_text("raise ImportError('mpi4py is hidden by the test')")
    settings = tiny_run(tmp_path / "out", corpus, max_iters=2)
    hidden = tinygpt(["train", *cli_args(settings), "--ranks", "2"], tmp_path,
                     PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "nompi"), os.environ.get("PYTHONPATH")])))
    assert hidden.returncode == 0, hidden.stderr
    warnings = [line for line in hidden.stderr.splitlines() if line.startswith("tinygpt:")]
    assert len(warnings) == 1 and warnings[0].startswith("tinygpt: warning:") and "one process" in warnings[0]
    assert "1 process x 1 thread, 4 sequences each" in hidden.stdout


def relayed(chunks: list[bytes]) -> str:
    """What relay_stderr prints for the ranks' stderr arriving in these chunks."""
    import io
    from tinygpt.distributed import relay_stderr

    read, write = os.pipe()
    for chunk in chunks:
        os.write(write, chunk)
    os.close(write)
    target = io.StringIO()
    relay_stderr(read, target)
    os.close(read)
    return target.getvalue()


def test_an_abort_banner_run_into_a_ranks_error_line_is_still_folded_away():
    # as hydra forwarded them once: rank 1's line, its newline lost, then rank 0's MPI_Abort message
    message = "data file x.txt is too short for block size 9"
    abort = "Abort(1) on node 0 (rank 0 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 1) - process 0\n"
    assert relayed([f"tinygpt: error: rank 0 of 2: {message}\n".encode(),
                    f"tinygpt: error: rank 1 of 2: {message}".encode(), abort.encode()]) == f"tinygpt: error: {message}\n"
    assert relayed([f"tinygpt: error: rank 1 of 2: {message}\n".encode(), b"step 3 loss 2.5" + abort.encode()]) == (
        f"step 3 loss 2.5\ntinygpt: error: rank 1 of 2: {message}\n")
    assert relayed([b"a rank's line\n\n", f"tinygpt: error: rank 0 of 2: {message}\n".encode(), abort.encode()]) == (
        f"a rank's line\n\ntinygpt: error: {message}\n")  # an abort on its own line leaves no blank line
