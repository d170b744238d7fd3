"""tinygpt.distributed: the single-process world, and MPI's collectives under `mpiexec -n 2` (skipped, with
the reason, where MPI cannot start)."""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tinygpt.distributed import LAUNCHER_RANK_VARIABLES, World, get_world, launched_by_mpi, share_counts
from tinygpt.nn import FullyConnectedLayer
from tinygpt.tensor import Tensor


def mpiexec() -> str | None:
    """The mpiexec of this environment (pip's mpich puts it beside python), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def without_launcher(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key not in LAUNCHER_RANK_VARIABLES}


def run_ranks(ranks: int, args: list[str], timeout: float = 60, **env) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks python args...` with `env` added; its output as text."""
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=without_launcher(os.environ) | env)


@pytest.fixture(scope="session")
def mpi() -> None:
    """Skip unless `mpiexec -n 2` starts two ranks of mpi4py here."""
    if mpiexec() is None:
        pytest.skip("no mpiexec (pip install mpi4py mpich)")
    try:
        result = run_ranks(2, ["-c", "from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.allreduce(c.Get_rank()))"],
                           timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("mpiexec -n 2 did not start within 30 s")
    if result.returncode != 0 or "".join(result.stdout.split()) != "11":
        pytest.skip(f"mpiexec -n 2 cannot start mpi4py here: {(result.stderr or result.stdout).strip()[:200]}")


def test_a_plain_process_is_a_world_of_one_without_mpi4py():
    code = ("import sys, numpy as np; from tinygpt.distributed import get_world; w = get_world(); "
            "a = np.arange(3.0); w.all_reduce(a); w.broadcast(a); w.barrier(); "
            "print(w.rank, w.world_size, w.is_main, a.tolist(), w.gather('x'), 'mpi4py' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=without_launcher(os.environ))
    assert result.stdout.split(None, 3)[:3] == ["0", "1", "True"]
    assert result.stdout.strip().endswith("[0.0, 1.0, 2.0] ['x'] False")


def test_the_launcher_is_detected_from_its_environment(monkeypatch):
    for name in LAUNCHER_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_mpi()
    for name in LAUNCHER_RANK_VARIABLES:
        monkeypatch.setenv(name, "0")
        assert launched_by_mpi()
        monkeypatch.delenv(name)


def test_a_world_of_one_leaves_gradients_and_the_loss_alone():
    layer = FullyConnectedLayer(3, 2)
    (layer(Tensor(np.ones((4, 3), dtype=np.float32))) ** 2).sum().backward()
    before = {name: tensor.grad.numpy().copy() for name, tensor in layer.named_parameters()}
    assert World().average_gradients(layer, 1.5) == 1.5
    for name, tensor in layer.named_parameters():
        np.testing.assert_array_equal(tensor.grad.numpy(), before[name])
    assert isinstance(get_world(), World)


class DoublingWorld(World):
    """Two ranks that computed the same gradients and loss: each all-reduce doubles its array, in place."""

    world_size = 2

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def all_reduce(self, array):
        self.sizes.append(array.size)
        array *= 2
        return array


def test_gradients_in_the_optimizers_storage_are_averaged_in_place_as_a_flat_copy_would_be():
    """From AdamW's second update on, average_gradients all-reduces its flat gradient storage itself (then
    the loss) instead of a copy with the loss at its end: the same losses and parameters, bit for bit."""
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.nn import MLP
    from tinygpt.optimizers import AdamW, clip_grad_norm
    import tinygpt

    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(4)]
    runs = []
    for in_storage in (True, False):
        tinygpt.manual_seed(0)
        model, world = MLP(4, [8, 3], "tanh"), DoublingWorld()
        optimizer = AdamW(model, 1e-2, weight_decay=0.1)
        losses = []
        for x, y in data:
            if not in_storage:
                for _, parameter in model.named_parameters():
                    parameter.keep_grad_in(None)
            optimizer.zero_grad()
            loss = CrossEntropyLoss()(model(Tensor(x)), Tensor(y), reduction="mean")
            loss.backward()
            losses.append(world.average_gradients(model, loss.item()))
            clip_grad_norm(model, 0.3)
            optimizer.step()
        runs.append((losses, [parameter.numpy() for _, parameter in model.named_parameters()], world.sizes))
    (losses, values, sizes), (copy_losses, copy_values, copy_sizes) = runs
    gradients = sum(parameter.size for parameter in values)
    assert sizes == [gradients + 1] + [gradients, 1] * 3 and copy_sizes == [gradients + 1] * 4
    assert losses == copy_losses
    for got, want in zip(values, copy_values, strict=True):
        np.testing.assert_array_equal(got, want)


COLLECTIVES = """
import json, sys
import numpy as np
from tinygpt import backend, get_num_threads
from tinygpt.distributed import get_world
from tinygpt.nn import FullyConnectedLayer
from tinygpt.tensor import Tensor
world = get_world()
summed = world.all_reduce(np.full(3, world.rank + 1.0))
sent = world.broadcast(np.full(2, 10.0 * world.rank + 7.0), root=1)
backend.manual_seed(world.rank)  # each rank initialises its own weights, then takes rank 0's
layer = FullyConnectedLayer(3, 2)
world.broadcast_parameters(layer)
x = np.arange(12, dtype=np.float32).reshape(4, 3) * (world.rank + 1)  # each rank its own inputs
(layer(Tensor(x)) ** 2).sum().backward()
own = {name: tensor.grad.numpy().tolist() for name, tensor in layer.named_parameters()}
loss = world.average_gradients(layer, float(world.rank + 1))
report = dict(rank=world.rank, size=world.world_size, local=world.local_size, threads=get_num_threads(),
              summed=summed.tolist(), sent=sent.tolist(), loss=loss, own=own,
              weights={name: tensor.numpy().tolist() for name, tensor in layer.named_parameters()},
              mean={name: tensor.grad.numpy().tolist() for name, tensor in layer.named_parameters()})
gathered = world.gather(report)
if world.is_main:
    print(json.dumps(gathered))
"""


def test_collectives_over_two_ranks(mpi):
    result = run_ranks(2, ["-c", COLLECTIVES])
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert [first["rank"], second["rank"]] == [0, 1] and first["size"] == first["local"] == 2
    assert first["summed"] == second["summed"] == [3.0, 3.0, 3.0]
    assert first["sent"] == second["sent"] == [17.0, 17.0]
    assert first["loss"] == second["loss"] == 1.5
    assert first["weights"] == second["weights"]
    for name, own in first["own"].items():
        expected = (np.array(own, dtype=np.float32) + np.array(second["own"][name], dtype=np.float32)) / 2
        np.testing.assert_array_equal(np.array(first["mean"][name], dtype=np.float32), expected, err_msg=name)
        assert first["mean"][name] == second["mean"][name]


# Every rank: the same model and batches, trained by AdamW with the moments shared out among the ranks and by
# AdamW in one process (no world), then by torch's; rank 0 prints what each rank found.
SHARED_MOMENTS = """
import json, os, sys
import numpy as np, torch, tinygpt
from tinygpt.distributed import get_world
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import MLP
from tinygpt.optimizers import AdamW
from tinygpt.serialization import load_arrays
from tinygpt.tensor import Tensor
world = get_world()
rng = np.random.default_rng(0)
batches = [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(6)]

def train(optimizer_world, bias_rests_at=None):
    tinygpt.manual_seed(0)
    model = MLP(4, [40, 3], "tanh")  # 323 values, 280 decayed: the last share holds decayed and undecayed values,
                                     # and with 3 ranks a share ends inside a matrix
    optimizer = AdamW(model, 1e-2, (0.9, 0.95), weight_decay=0.1, decay_matrices_only=True, world=optimizer_world)
    for step, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        CrossEntropyLoss()(model(Tensor(x)), Tensor(y), reduction="mean").backward()
        if step == bias_rests_at:  # one parameter without a gradient: the per-parameter path from here on
            dict(model.named_parameters())["layers.1.bias"].grad = None
        optimizer.step()
    return model, optimizer

def by_torch(model):
    tinygpt.manual_seed(0)
    start = {name: torch.tensor(tensor.numpy()) for name, tensor in MLP(4, [40, 3], "tanh").named_parameters()}
    weights = {name: value.requires_grad_() for name, value in start.items()}
    matrices = [value for value in weights.values() if value.dim() == 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                                   {"params": [v for v in weights.values() if v.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-2, betas=(0.9, 0.95))
    for x, y in batches:
        optimizer.zero_grad()
        hidden = torch.tanh(torch.from_numpy(x) @ weights["layers.0.weights"] + weights["layers.0.bias"])
        logits = torch.tanh(hidden @ weights["layers.1.weights"] + weights["layers.1.bias"])  # MLP: tanh after each layer
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
        optimizer.step()
    return max(float(np.abs(weights[name].detach().numpy() - tensor.numpy()).max())
               for name, tensor in model.named_parameters())

shared, shared_optimizer = train(world)
alone, alone_optimizer = train(None)
share = shared_optimizer._flat.exp_avg.size
saved, alone_saved = shared_optimizer.state_arrays(), alone_optimizer.state_arrays()  # every rank: a collective
same_state = (sorted(saved) == sorted(alone_saved) and all(np.array_equal(saved[k], alone_saved[k]) for k in saved)
              if world.is_main else None)
shared_optimizer.save_state(f"{sys.argv[1]}/state-{world.rank}.safetensors")  # every rank calls it, rank 0 writes
world.barrier()
written = sorted(name for name in os.listdir(sys.argv[1]))
from_file = load_arrays(f"{sys.argv[1]}/state-0.safetensors") if world.is_main else {}
same_file = (sorted(from_file) == sorted(alone_saved) and all(np.array_equal(from_file[k], alone_saved[k]) for k in from_file)
             if world.is_main else None)
resting, resting_optimizer = train(world, bias_rests_at=4)
alone_resting, alone_resting_optimizer = train(None, bias_rests_at=4)
report = dict(
    share=share, total=shared_optimizer._flat.values.size, same_state=same_state, same_file=same_file, written=written,
    same=all(np.array_equal(a.numpy(), b.numpy()) for (_, a), (_, b) in zip(shared.named_parameters(), alone.named_parameters())),
    same_resting=all(np.array_equal(a.numpy(), b.numpy())
                     for (_, a), (_, b) in zip(resting.named_parameters(), alone_resting.named_parameters())),
    same_resting_state=all(np.array_equal(resting_optimizer.state[name][key], alone_resting_optimizer.state[name][key])
                           for name in alone_resting_optimizer.state for key in ("exp_avg", "exp_avg_sq")),
    torch_difference=by_torch(shared))
gathered = world.gather(report)
if world.is_main:
    print(json.dumps(gathered))
"""


@pytest.mark.parametrize("ranks", [2, 3])
def test_adamw_ranks_share_its_moments_and_step_as_one_process(mpi, ranks, tmp_path):
    """ZeRO stage 1: each rank keeps the moments of its share of the parameters; the parameters after every
    step, the state saved (gathered on rank 0) and the steps after a fall back to per-parameter updates (the
    moments gathered whole on every rank) are one process's, bit for bit, and torch's to float32 rounding."""
    result = run_ranks(ranks, ["-c", SHARED_MOMENTS, str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert sum(report["share"] for report in reports) == reports[0]["total"] == 323
    assert all(report["share"] < report["total"] for report in reports)
    assert reports[0]["same_state"] is True and reports[0]["same_file"] is True
    assert reports[0]["written"] == ["state-0.safetensors"]  # save_state on every rank: rank 0 alone writes
    for report in reports:
        assert report["same"] and report["same_resting"] and report["same_resting_state"], report
        assert report["torch_difference"] < 1e-6, report


@pytest.mark.parametrize("size, ranks", [(323, 2), (323, 3), (20, 2), (10_770_000, 2), (7, 4), (0, 2), (64, 1)])
def test_the_ranks_shares_of_the_moments_cover_the_parameters_once(size, ranks):
    counts = share_counts(size, ranks)
    assert len(counts) == ranks and sum(counts) == size and min(counts) >= 0
    assert all(count % 16 == 0 for count in counts[:-1])  # every share but the last starts and ends on a 64-byte line
    assert all(abs(count - size / ranks) < 16 for count in counts)  # as equal as whole lines allow


def test_ranks_share_the_cores(mpi):
    code = ("from tinygpt import get_num_threads; from tinygpt.distributed import get_world; w = get_world(); "
            "threads = w.gather(get_num_threads()); print(*(threads or []))")
    cores = len(os.sched_getaffinity(0))
    shared = run_ranks(2, ["-c", code])
    assert shared.returncode == 0, shared.stderr
    assert all(int(threads) <= max(1, cores // 2) for threads in shared.stdout.split())


# ---- training under mpiexec ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare: enough for a tiny model, quick to tokenise."""
    from tinygpt.dataset import default_corpus_path

    path = tmp_path_factory.mktemp("corpus") / "shakespeare-head.txt"
    path.write_text(default_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def tiny_run(out_dir: Path, corpus: Path, **changes) -> dict:
    settings = dict(data=str(corpus), out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                    max_iters=6, lr_decay_iters=6, warmup_iters=2, eval_interval=3, eval_iters=2, sample_tokens=0)
    return settings | changes


def cli_args(settings: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" if value is not True else f"--{key.replace('_', '-')}"
            for key, value in settings.items()]


# `tinygpt train ARGS` on every rank (the CLI's main), then rank 0 prints the run's history and whether every
# rank ended with the same parameters, bit for bit.
TRAIN_AND_COMPARE = """
import json, sys
import numpy as np
import tinygpt.cli as cli, tinygpt.train as training
from tinygpt.distributed import get_world
runs = []
cli.train = lambda config: runs.append(training.train(config)) or runs[-1]
status = cli.main(["train", *sys.argv[1:]])
weights = {name: tensor.numpy() for name, tensor in runs[0].model.named_parameters()}
every = get_world().gather(weights)
if get_world().is_main:
    same = all(np.array_equal(other[name], array) for other in every[1:] for name, array in weights.items())
    print(json.dumps(dict(status=status, same=same, history=runs[0].history)))
"""


def train_ranks(ranks: int, settings: dict, **env) -> dict:
    result = run_ranks(ranks, ["-c", TRAIN_AND_COMPARE, *cli_args(settings)], TINYGPT_CACHE_DIR=env.pop("cache"), **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_ranks_train_as_one_process_with_the_global_batch(mpi, tmp_path, corpus, monkeypatch):
    from tinygpt.train import TrainConfig, load_checkpoint, train

    monkeypatch.setenv("TINYGPT_CACHE_DIR", str(tmp_path / "cache"))
    two = train_ranks(2, tiny_run(tmp_path / "two", corpus, batch_size=4), cache=str(tmp_path / "cache"))
    one = train(TrainConfig.from_settings(tiny_run(tmp_path / "one", corpus, batch_size=8)), verbose=False)

    assert two["status"] == 0 and two["same"], "the ranks ended with different parameters"
    assert len(two["history"]["losses"]) == 6
    np.testing.assert_allclose(two["history"]["losses"], one.history["losses"], rtol=1e-5)
    for shared, alone in zip(two["history"]["evals"], one.history["evals"]):
        assert shared.keys() == alone.keys()
        np.testing.assert_allclose(list(shared.values()), list(alone.values()), rtol=1e-5)
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [".lock", "ckpt", "loss.png", "metrics.jsonl"]
    assert load_checkpoint(tmp_path / "two").state["history"] == two["history"]


def test_accumulating_ranks_train_as_one_accumulating_process(mpi, tmp_path, corpus, monkeypatch):
    """2 ranks x batch 2 x 2 micro-steps = one process of batch 4 x 2 micro-steps, per-step losses and all.

    Each step every rank draws the same 2 x (2 x 2) = 8 windows and takes its own 4 (rank_batch), cut in two
    micro-batches of 2; the one process draws the same 8 windows, cut in two micro-batches of 4. The mean of
    the four equal-sized micro-batch means is the mean over the 8 windows either way, so the averaged
    gradients, and with them every step, agree up to float32 reduction order."""
    from tinygpt.train import TrainConfig, train

    monkeypatch.setenv("TINYGPT_CACHE_DIR", str(tmp_path / "cache"))
    two = train_ranks(2, tiny_run(tmp_path / "two", corpus, batch_size=2, gradient_accumulation_steps=2),
                      cache=str(tmp_path / "cache"))
    one = train(TrainConfig.from_settings(tiny_run(tmp_path / "one", corpus, batch_size=4, gradient_accumulation_steps=2)),
                verbose=False)

    assert two["status"] == 0 and two["same"], "the ranks ended with different parameters"
    assert len(two["history"]["losses"]) == 6
    np.testing.assert_allclose(two["history"]["losses"], one.history["losses"], rtol=1e-5)


def test_resume_under_mpiexec_continues_as_an_uninterrupted_run(mpi, tmp_path, corpus):
    cache = str(tmp_path / "cache")
    whole = train_ranks(2, tiny_run(tmp_path / "whole", corpus, dropout=0.1), cache=cache)
    train_ranks(2, tiny_run(tmp_path / "split", corpus, dropout=0.1, max_iters=3), cache=cache)
    resumed = train_ranks(2, dict(out_dir=str(tmp_path / "split"), max_iters=6, resume=True), cache=cache)
    assert resumed["same"] and len(resumed["history"]["losses"]) == 6
    assert resumed["history"] == whole["history"]


def test_ctrl_c_under_mpiexec_saves_once_and_resumes(mpi, tmp_path, corpus):
    """Ctrl-C to mpiexec: hydra forwards SIGINT to every rank, they agree to stop (one all-reduce), rank 0
    saves and says how to resume, and `--resume` takes the steps an uninterrupted run takes."""
    from tinygpt.train import load_checkpoint

    cache, out_dir = str(tmp_path / "cache"), tmp_path / "out"
    settings = tiny_run(out_dir, corpus, max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000, log_interval=1)
    code = "import sys, tinygpt.cli as cli; sys.exit(cli.main(['train', *sys.argv[1:]]))"
    launcher = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-c", code, *cli_args(settings)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=without_launcher(os.environ) | {"TINYGPT_CACHE_DIR": cache})
    watchdog = threading.Timer(120, launcher.kill)  # quietly all of it takes about 3 s: this only ends a hang
    watchdog.start()
    lines = []
    for line in launcher.stdout:  # rank 0's "iter 2: ..." comes after both ranks' third all-reduce: both are training
        lines.append(line)
        if line.startswith("iter 2:"):
            break
    launcher.send_signal(signal.SIGINT)
    output = "".join(lines) + launcher.communicate()[0]
    watchdog.cancel()
    assert launcher.returncode == 130, output
    said = re.findall(r"tinygpt: interrupted at iteration (\d+): checkpoint saved in (.*); continue it with: (.*)", output)
    assert len(said) == 1, output
    iteration, saved_in, command = int(said[0][0]), said[0][1], said[0][2]
    assert saved_in == str(out_dir / "ckpt") and command == f"mpiexec -n 2 tinygpt train --out-dir {out_dir} --resume"
    assert "Traceback" not in output
    assert load_checkpoint(out_dir).state["iteration"] == iteration

    resumed = train_ranks(2, dict(out_dir=str(out_dir), max_iters=iteration + 2, resume=True), cache=cache)
    whole = train_ranks(2, settings | dict(out_dir=str(tmp_path / "whole"), max_iters=iteration + 2), cache=cache)
    assert resumed["same"] and len(resumed["history"]["losses"]) == iteration + 2
    assert resumed["history"]["losses"] == whole["history"]["losses"]


# Rank 1 fails at its fifth step (iteration 4), while rank 0 may be writing the checkpoint of iteration 4;
# rank 0 would wait for it in the next all-reduce. Rank 1 notes the time of the failure in FAILED_AT.
FAIL_ON_RANK_1 = """
import os, sys, time
import tinygpt.cli as cli, tinygpt.train as training
from tinygpt.distributed import get_world
step, steps = training.train_step, []
def failing_step(*args, **kwargs):
    steps.append(1)
    if get_world().rank == 1 and len(steps) == 5:
        open(os.environ["FAILED_AT"], "w").write(repr(time.time()))
        raise RuntimeError("injected failure")
    return step(*args, **kwargs)
training.train_step = failing_step
sys.exit(cli.main(["train", *sys.argv[1:]]))
"""


def test_one_rank_failing_stops_both_with_one_line(mpi, tmp_path, corpus):
    from tinygpt.train import load_checkpoint

    settings = tiny_run(tmp_path / "out", corpus, max_iters=1000, eval_interval=2)
    # Quietly the run fails about 3 s after mpiexec starts (imports, tokenising, 4 steps); the limit only
    # catches a hang (a rank left waiting) on a loaded machine. Stopping is timed from the failure itself.
    result = run_ranks(2, ["-c", FAIL_ON_RANK_1, *cli_args(settings)], timeout=120,
                       TINYGPT_CACHE_DIR=str(tmp_path / "cache"), FAILED_AT=str(tmp_path / "failed-at"))
    stopped = time.time()
    assert result.returncode != 0
    assert stopped - float((tmp_path / "failed-at").read_text()) < 10, "the ranks took more than 10 s to stop"
    ours = re.findall(r"tinygpt: .*", result.stderr)  # rank 0's progress bar may precede it on its line
    assert ours == ["tinygpt: error: rank 1 of 2: RuntimeError: injected failure"], result.stderr
    assert "Traceback" not in result.stderr
    assert load_checkpoint(tmp_path / "out").state["iteration"] in (2, 4)  # the last complete checkpoint


def test_an_aborting_rank_waits_until_the_launcher_has_read_its_line():
    from tinygpt.distributed import wait_until_read

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "w") as writer:
        print("tinygpt: error: rank 1 of 2: ...", file=writer, flush=True)
        started = time.monotonic()
        wait_until_read(writer, timeout=0.3)  # nobody reads: it gives up
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.2, lambda: reader.read1(1000)).start()  # the launcher reads after 0.2 s
        started = time.monotonic()
        wait_until_read(writer, timeout=30)
        assert 0.2 <= time.monotonic() - started < 10
    started = time.monotonic()
    wait_until_read(io.StringIO(), timeout=30)  # not a pipe: nothing to wait for
    assert time.monotonic() - started < 1


def test_sharing_cores_gives_each_rank_its_share_of_blas_threads():
    code = ("from tinygpt import get_num_threads; from tinygpt.distributed import share_cores; share_cores(4, 2); "
            "print(get_num_threads())")
    shared = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=without_launcher(os.environ))
    assert shared.stdout.strip() == "2"
    alone = subprocess.run([sys.executable, "-c", code.replace("share_cores(4, 2)", "share_cores(2, 2)")],
                           capture_output=True, text=True, check=True, env=without_launcher(os.environ))
    assert alone.stdout.strip() == "1"


def test_each_rank_finds_its_dropout_stream_in_the_checkpoint_state():
    from tinygpt.checkpoint import saved_dropout_state

    two_ranks = {"dropout_rng": {"r": 0}, "dropout_rngs": [{"r": 0}, {"r": 1}]}
    assert [saved_dropout_state(two_ranks, rank, 2) for rank in (0, 1)] == [{"r": 0}, {"r": 1}]
    assert [saved_dropout_state(two_ranks, rank, 3) for rank in (0, 1, 2)] == [{"r": 0}, None, None]
    one_process = {"dropout_rng": {"r": 0}}  # written before tinygpt.distributed, or by a single process
    assert [saved_dropout_state(one_process, rank, 2) for rank in (0, 1)] == [{"r": 0}, None]
    assert saved_dropout_state(one_process, 0, 1) == {"r": 0}
