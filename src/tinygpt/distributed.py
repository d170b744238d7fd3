"""Data-parallel training over MPI (mpi4py): the same program on every rank, gradients averaged in one
all-reduce per step, so every rank takes the same optimizer step and holds the same parameters.

    tinygpt train                       # one single-threaded rank per core, the recipe's batch split among them
    mpiexec -n 2 tinygpt train          # two ranks of batch_size each; see docs/distributed.md

`get_world()` is an `MPIWorld` when the process was started by an MPI launcher (MPICH's or Intel's hydra,
Open MPI's mpirun, Slurm's srun through PMIx) and a single-process `World`, whose collectives do nothing,
otherwise. mpi4py is imported only in the first case: it stays the optional `dist` extra.
"""
from __future__ import annotations

import array
import ctypes
import itertools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

from tinygpt.module import Module
from tinygpt.threads import set_num_threads
from tinygpt.tensor import Tensor
from tinygpt.utils import pack, unpack

# Each launcher tells its processes their rank in one of these (hydra: PMI_RANK; Slurm and Open MPI 5: PMIX_RANK).
LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
RANKS_VARIABLE = "TINYGPT_RANKS"  # how many ranks `tinygpt train` and `tinygpt eval` start, as --ranks
SPLIT_BATCH_VARIABLE = "TINYGPT_SPLIT_BATCH"  # set by launch_ranks: batch_size is the global batch, split among ranks
TERMINAL_VARIABLE = "TINYGPT_TERMINAL"  # set by launch_ranks when its stderr is a terminal (the ranks' is a pipe)
RANK_ERROR = re.compile(r"^(?:.*\r)?tinygpt: error: rank (?P<rank>\d+) of (?P<ranks>\d+): (?P<message>.*)$")
# What MPICH prints when a rank calls MPI_Abort, and hydra's banner when a rank ends badly
MPI_ABORT = r"Abort\(\d+\) on node \d+"
MPI_ABORT_LINE = re.compile(rf"^({MPI_ABORT}|=+$|=   |YOUR APPLICATION TERMINATED|This typically refers to a "
                            r"problem with your application|Please see the FAQ page)")
PR_SET_PDEATHSIG = 1  # prctl(2)


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (it set one of LAUNCHER_RANK_VARIABLES)."""
    return any(name in os.environ for name in LAUNCHER_RANK_VARIABLES)


class World:
    """One process: rank 0 of a world of 1, where every collective leaves its data as it is."""

    rank = 0
    world_size = 1
    local_size = 1  # ranks on this machine
    splits_batch = True  # whether batch_size is the global batch (split among ranks) or each rank's

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes checkpoints, metrics and the plot, and prints."""
        return self.rank == 0

    def all_reduce(self, array: np.ndarray) -> np.ndarray:
        """Sum `array` over the ranks, in place; returns it."""
        return array

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `array` with root's, in place; returns it."""
        return array

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` (any picklable object), in rank order, on rank 0; None on the others."""
        return [value]

    def all_gather(self, array: np.ndarray, counts: list[int]) -> np.ndarray:
        """Give every rank every rank's part of the 1-D `array`, in place: rank r's part is its counts[r] values
        after the sum(counts[:r]) before them. Returns `array`."""
        return array

    def gather_parts(self, part: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """The ranks' 1-D parts (counts[r] values each) one after another in one new array on rank 0; None on
        the others."""
        return part.copy()

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, message: str, status: int = 1) -> NoReturn:
        """Print `message` (one line, naming this rank) to stderr and stop every rank with `status`."""
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(status)

    def sum_floats(self, values: list[float]) -> list[float]:
        """Each of `values` summed over the ranks (float64), in one all-reduce."""
        return self.all_reduce(np.array(values, dtype=np.float64)).tolist()

    def average_gradients(self, module: Module, loss: float) -> float:
        """Replace every gradient of `module` by its mean over the ranks, and return the mean `loss`: in place in
        the optimizer's flat gradient storage when the gradients live there, else through one flat copy of
        them (the gradients, then the loss)."""
        if self.world_size == 1:
            return loss
        flat = module.packed_gradients()
        if flat is not None:  # the optimizer's flat gradient storage (Module.pack_gradients): in place, no copies
            self.all_reduce(flat)
            flat /= self.world_size
            return float(self.all_reduce(np.array([loss], dtype=flat.dtype))[0] / self.world_size)
        tensors = [tensor for _, tensor in module.named_parameters() if tensor.grad is not None]
        grads = [tensor.grad.buffer.array for tensor in tensors]
        xp, dtype = (tensors[0].grad.buffer.xp, grads[0].dtype) if tensors else (np, np.float32)
        flat = pack(grads, xp.empty(sum(grad.size for grad in grads) + 1, dtype=dtype))
        flat[-1] = loss
        self.all_reduce(flat)
        flat /= self.world_size
        for tensor, mean in zip(tensors, unpack(flat, [tensor.shape for tensor in tensors])):
            if tensor.grad.buffer.is_contiguous():
                tensor.grad.buffer.array[...] = mean
            else:  # a broadcast view, which cannot hold a value per element
                tensor.grad = Tensor(mean.copy(), device=tensor.device)
        return float(flat[-1])

    def broadcast_parameters(self, module: Module, root: int = 0) -> None:
        """Give every rank root's parameter values (after each rank initialised its own), in one broadcast."""
        if self.world_size == 1:
            return
        buffers = [tensor.buffer for _, tensor in module.named_parameters()]
        flat = self.broadcast(pack([buffer.array for buffer in buffers]), root)
        for buffer, value in zip(buffers, unpack(flat, [buffer.shape for buffer in buffers])):
            buffer.array[...] = value


class MPIWorld(World):
    """The ranks of MPI's COMM_WORLD. Arrays go to MPI as buffers (no copies, no pickling); on a GPU that
    needs a CUDA-aware MPI build (untested here)."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.splits_batch = os.environ.get(SPLIT_BATCH_VARIABLE) == "1"
        machine = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = machine.Get_size()
        cores, masks = usable_cores(), machine.allgather(usable_cores())
        share_cores(len(cores), masks.count(cores))  # a scheduler that pinned each rank to its own cores shares none

    def all_reduce(self, array: np.ndarray) -> np.ndarray:
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        return array

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        self.comm.Bcast(array, root=root)
        return array

    def gather(self, value: Any) -> list[Any] | None:
        return self.comm.gather(value, root=0)

    def all_gather(self, array: np.ndarray, counts: list[int]) -> np.ndarray:
        self.comm.Allgatherv(self._mpi.IN_PLACE, [array, (counts, starts(counts))])
        return array

    def gather_parts(self, part: np.ndarray, counts: list[int]) -> np.ndarray | None:
        whole = np.empty_like(part, shape=sum(counts)) if self.is_main else None
        self.comm.Gatherv(part, [whole, (counts, starts(counts))] if self.is_main else None, root=0)
        return whole

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, message: str, status: int = 1) -> NoReturn:
        print(message, file=sys.stderr, flush=True)
        wait_until_read(sys.stderr)  # else the launcher may end every rank before it has forwarded the line
        self.comm.Abort(status)
        raise SystemExit(status)  # not reached: Abort ends this process too


def starts(counts: list[int]) -> list[int]:
    """Where each of consecutive parts of these sizes starts."""
    return list(itertools.accumulate(counts[:-1], initial=0))


def share_counts(size: int, ranks: int, multiple: int = 16) -> list[int]:
    """How many of `size` consecutive values each of `ranks` ranks takes: equal to within `multiple`, every
    share but the last a multiple of it (whole 64-byte lines of float32)."""
    bounds = [size * rank // ranks // multiple * multiple for rank in range(ranks)] + [size]
    return [stop - start for start, stop in zip(bounds, bounds[1:])]


def wait_until_read(stream: TextIO, timeout: float = 2.0) -> None:
    """When `stream` is a pipe (a launcher's, that forwards this rank's output), wait until its reader has taken
    everything written to it, for at most `timeout` seconds. Hydra sends a rank's output and its abort over one
    connection, in the order it reads them, so a line it has read before the abort is printed before it stops."""
    import fcntl, termios  # POSIX only, as the pipes are: imported here so that the module loads anywhere

    try:
        descriptor = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(descriptor).st_mode):
            return
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture), or closed
        return
    unread, deadline = array.array("i", [0]), time.monotonic() + timeout
    while time.monotonic() < deadline:
        fcntl.ioctl(descriptor, termios.FIONREAD, unread)  # bytes still in the pipe
        if unread[0] == 0:
            return
        time.sleep(0.01)


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def share_cores(cores: int, ranks: int) -> None:
    """Split `cores` among the `ranks` that may all run on them: cores / ranks BLAS threads each (at least 1)."""
    set_num_threads(max(1, cores // ranks))


def default_ranks(cores: int, batch_size: int | None = None) -> int:
    """One rank per core, as many as divide the batch into equal shares (all the cores without a batch)."""
    most = max(cores, 1) if batch_size is None else min(max(cores, 1), batch_size)
    return max(ranks for ranks in range(1, most + 1) if batch_size is None or batch_size % ranks == 0)


def requested_ranks(flag: int | None, batch_size: int | None = None) -> int:
    """The ranks a command starts: --ranks, else TINYGPT_RANKS, else default_ranks on the cores this process
    may use; a number that does not divide the batch into equal shares raises ValueError."""
    value = flag if flag is not None else os.environ.get(RANKS_VARIABLE)
    if value is None:
        return default_ranks(len(usable_cores()), batch_size)
    source = "--ranks" if flag is not None else RANKS_VARIABLE
    try:
        ranks = int(value)
    except ValueError:
        raise ValueError(f"{source} must be a whole number, got {value!r}") from None
    if ranks < 1:
        raise ValueError(f"{source} must be at least 1, got {ranks}")
    if batch_size is not None and batch_size % ranks:
        raise ValueError(f"{source} {ranks} does not split --batch-size {batch_size} into equal shares: choose a "
                         f"divisor of {batch_size}")
    return ranks


def mpiexec_path() -> str | None:
    """The MPI launcher of this environment (pip's mpich puts it beside python), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def why_mpi_cannot_start() -> str | None:
    """None where launch_ranks can start ranks, else why not."""
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself starts in each rank)
    except ImportError as error:
        return f"MPI cannot start ({error}; pip install mpi4py mpich)"
    if mpiexec_path() is None:
        return "MPI cannot start (no mpiexec beside python or on PATH; pip install mpich)"
    return None


def launch_ranks(ranks: int, argv: list[str]) -> int:
    """Run `mpiexec -n ranks python -m tinygpt argv`, each rank told that batch_size is the global batch, and
    return its exit status. This process stays in front of the ranks: Ctrl-C, SIGTERM and SIGHUP reach mpiexec
    once, through it (mpiexec forwards them to every rank); on Linux mpiexec, and with it every rank, ends when
    this process does, even killed; the ranks' error lines come out folded into one (relay_stderr)."""
    env = dict(os.environ, **{SPLIT_BATCH_VARIABLE: "1"}, **({TERMINAL_VARIABLE: "1"} if sys.stderr.isatty() else {}))
    sys.stdout.flush()
    sys.stderr.flush()
    launcher = subprocess.Popen([mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "tinygpt", *argv], env=env,
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=end_with_parent(os.getpid()))
    forward = lambda signum, frame: launcher.send_signal(signum)  # noqa: E731
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        relay_stderr(launcher.stderr.fileno(), sys.stderr)
        return launcher.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def end_with_parent(parent: int):
    """What a child runs before it starts its program: ask the kernel to kill it when `parent` ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing), and end at once if `parent` has ended already."""
    def arrange() -> None:
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # not Linux
            return
        if os.getppid() != parent:
            os._exit(1)
    return arrange


def split_at_abort(line: str) -> list[str]:
    """The line, cut where an MPI abort message starts inside it (hydra can run one into another rank's line)."""
    parts = re.split(f"(?={MPI_ABORT})", line)
    return parts[1:] if len(parts) > 1 and not parts[0] else parts


def relay_stderr(source: int, target: TextIO) -> None:
    """Copy the ranks' stderr to `target` as it comes, until it closes, but for their error lines, which are
    printed at the end once per message ("rank R of N:" only where rank 0 did not fail the same way), and the MPI
    library's own lines about an abort, which say nothing more (hydra can run one into another rank's line whose
    newline it has not forwarded yet)."""
    failures: dict[str, list[str]] = {}
    pending = ""
    while chunk := os.read(source, 1 << 16):
        pending += chunk.decode("utf-8", errors="replace")
        *lines, pending = pending.split("\n")
        for line in (part for line in lines for part in split_at_abort(line)):
            found = RANK_ERROR.match(line)
            if found:
                failures.setdefault(found["message"], []).append(f"rank {found['rank']} of {found['ranks']}")
            elif not MPI_ABORT_LINE.match(line):
                target.write(line + "\n")
        if "\r" in pending and not pending.startswith(("tinygpt:", "Abort", "=")):  # a progress bar's update
            shown, _, pending = pending.rpartition("\r")
            target.write(shown + "\r")
        target.flush()
    target.write(pending)
    for message, ranks in failures.items():
        named = "" if any(rank.startswith("rank 0 ") for rank in ranks) else f"{ranks[0]}: "
        target.write(f"tinygpt: error: {named}{message}\n")
    target.flush()


_world: World | None = None


def get_world() -> World:
    """This process's world: MPI's when an MPI launcher started it, else a single process (created once)."""
    global _world
    if _world is None:
        _world = MPIWorld() if launched_by_mpi() else World()
    return _world


__all__ = ["World", "MPIWorld", "get_world", "launched_by_mpi", "share_cores", "usable_cores", "wait_until_read",
           "default_ranks", "requested_ranks", "share_counts", "starts", "launch_ranks", "why_mpi_cannot_start", "mpiexec_path",
           "LAUNCHER_RANK_VARIABLES", "RANKS_VARIABLE", "SPLIT_BATCH_VARIABLE", "TERMINAL_VARIABLE"]
