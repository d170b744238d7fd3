"""Every benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("bench_*.py"))
NUMBER = r"\d+(?:\.\d+)?"
# Scripts whose peer is another project's checkout, not ours to ship: run where the variable names one.
NEEDS_CHECKOUT = {"bench_speedrun": "NANOGPT_DIR"}
# The lines each script prints only once it has measured both sides of its comparison.
SUMMARY_LINES = {
    "bench_compile": [rf"^cold compile: -?{NUMBER} s; a warm start adds -?{NUMBER} s$",
                      r"^\$ python benchmarks/bench_compile\.py --quick$"],
    "bench_instruments_off": [rf"^ratio \(instruments unused / baseline\): median {NUMBER}, range {NUMBER}-{NUMBER} over 1 rounds$",
                              r"^command: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_instruments_off\.py --quick$"],
    "bench_kernels": [rf"^\| all \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$",
                      r"^\$ python benchmarks/bench_kernels\.py --quick$"],
    "bench_corpus_memory": [rf"^\| CRLF \| {NUMBER} \| {NUMBER}-{NUMBER} \| {NUMBER}x \|$",
                            rf"^\| one line \| {NUMBER} \| {NUMBER}-{NUMBER} \| {NUMBER}x \|$"],
    "bench_generate": [rf"^\s+96\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$",
                       r"^reproduce with: python benchmarks/bench_generate\.py --quick$"],
    "bench_nanogpt_loss": [rf"^val loss over 4,096 tokens: tinygpt {NUMBER}  nanoGPT {NUMBER}  difference [+-]{NUMBER}$",
                           r"^reproduce: python benchmarks/bench_nanogpt_loss\.py --seed 1337 --gelu tanh --quick$"],
    "bench_ops": [rf"^  tinygpt / torch\s+{NUMBER}x$", rf"^  with grad: tinygpt / torch\s+{NUMBER}x$",
                  r"outputs and gradients checked equal$", r"^reproduce: .*python benchmarks/bench_ops\.py --quick$"],
    "bench_shared_moments": [rf"^  shared moments  median\s+{NUMBER} ms/step  rounds {NUMBER}$",
                             rf"^  whole  moments  median\s+{NUMBER} ms/step  rounds {NUMBER}$",
                             rf"^  shared / whole: median {NUMBER}, rounds {NUMBER}-{NUMBER}$",
                             r"^  the same losses: yes$", r"^command: python benchmarks/bench_shared_moments\.py --quick$"],
    "bench_speedrun": [rf"^  tinygpt train \(same recipe\)\s+median\s+{NUMBER} s, {NUMBER}x nanoGPT's time",
                       rf"^  tinygpt train --preset shakespeare-speedrun-cpu\s+median\s+{NUMBER} s, {NUMBER}x nanoGPT's time",
                       r"^  speedrun whole-split val loss <= 1\.88: seed 1337 (yes|no)$",
                       r"^command: python benchmarks/bench_speedrun\.py --quick$"],
    "bench_tokenizer": [rf"^  vocab\s+512\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$",
                        rf"^  vocab\s+512 \(\s*\d+ ids\)(\s+{NUMBER}){{3}}\s+{NUMBER}x\s+{NUMBER}x$",
                        r"^ids identical to tiktoken's: yes$"],
    "bench_training": [rf"^  tinygpt / torch eager at its best \(1 process x \d threads?\): {NUMBER}x \(rounds {NUMBER}-{NUMBER}, "
                       rf"spread 0%: quotable\), peak memory ratio {NUMBER} \(summed per process {NUMBER}\)$",
                       rf"^  tinygpt / torch DDP: {NUMBER}x \(rounds {NUMBER}-{NUMBER}, spread 0%: quotable\), "
                       rf"peak memory ratio {NUMBER} \(summed per process {NUMBER}\)$",
                       r"^command: tinygpt bench --quick$", r"^machine load before: ", r"^machine load after: ",
                       r"^  round 1/1: \d+ ranks? x 1 thread +\d+\.\d+ ms/step$"],
}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_benchmark_runs_quick_and_prints_its_ratios(script):
    assert script.stem in SUMMARY_LINES, f"{script.name}: add the summary lines it prints to SUMMARY_LINES"
    if script.stem in NEEDS_CHECKOUT and not os.environ.get(NEEDS_CHECKOUT[script.stem]):
        pytest.skip(f"{script.name} compares with a checkout of another project: set {NEEDS_CHECKOUT[script.stem]}")
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for line in SUMMARY_LINES[script.stem]:
        assert re.search(line, done.stdout, re.MULTILINE), f"{script.name}: no line matching {line!r} in\n{done.stdout}"


def test_bench_tokenizer_times_a_baseline_source_tree_beside_this_one_with_median_and_spread():
    src = Path(__file__).parent.parent / "src"
    done = subprocess.run([sys.executable, str(BENCHMARKS[0].parent / "bench_tokenizer.py"), "--quick", "--repeats", "2",
                           "--baseline-src", str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "median and spread (min-max) of 2 runs" in done.stdout, done.stdout
    timed = rf"{NUMBER} \({NUMBER}-{NUMBER}\)"
    for name in ("train vocab 512", "encode vocab 512 cold", "encode vocab 512 warm",
                 "encode 2,000 characters, 24 doubling merges", "encode 2,000 characters, abab tokenizer"):
        assert re.search(rf"^  {name}\s+{timed}\s+{timed}\s+{NUMBER}x$", done.stdout, re.MULTILINE), done.stdout


def test_bench_warns_when_another_process_holds_a_core(monkeypatch):
    from tinygpt import bench

    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert "warning: another process holds a core" in bench.load_report("before", 0.9)
    assert "warning" not in bench.load_report("after", 0.1) and "0.10 of 2 cores busy" in bench.load_report("after", 0.1)
    samples = iter([(100, 1000), (190, 1100)])  # 90 of 100 ticks busy over the window, on 2 cores
    monkeypatch.setattr(bench, "cpu_times", lambda: next(samples))
    assert bench.busy_cores(0.0) == pytest.approx(1.8)


def test_bench_spread_is_the_range_of_the_round_ratios_over_their_median():
    from tinygpt import bench

    assert bench.spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
    assert bench.spread([1.3, 1.3]) == 0.0


def test_bench_load_keeps_about_a_third_of_a_core_busy():
    import time

    from tinygpt import bench

    load = bench.start_load()
    try:
        time.sleep(1.0)  # the interpreter starts
        with open(f"/proc/{load.pid}/stat") as stat:
            before = sum(int(value) for value in stat.read().split()[13:15])
        time.sleep(3.0)
        with open(f"/proc/{load.pid}/stat") as stat:
            after = sum(int(value) for value in stat.read().split()[13:15])
    finally:
        load.kill()
        load.wait()
    share = (after - before) / os.sysconf("SC_CLK_TCK") / 3.0
    assert 0.15 < share < 0.5  # about LOAD_SHARE of a core, whatever else runs (it can only get less)


def test_bench_counts_a_file_that_processes_share_once_at_its_largest():
    from tinygpt import bench

    ranks = [{"peak_mb": 200.0, "files_mb": {"libnumba": 80.0, "libc": 5.0}},
             {"peak_mb": 190.0, "files_mb": {"libnumba": 78.0, "libc": 5.0, "shm": 2.0}}]
    assert bench.memory_together(ranks) == (390.0, 390.0 - (85.0 + 85.0) + (80.0 + 5.0 + 2.0))
    assert bench.memory_together(ranks[:1]) == (200.0, 200.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_bench_memory_use_finds_the_libraries_a_process_maps():
    """Two processes that import numpy hold its libraries once: counted once they weigh less than summed, by
    at most what each has resident of its files."""
    from tinygpt import bench

    code = "import json, numpy; from tinygpt import bench; print(json.dumps(bench.memory_use()))"
    uses = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      timeout=120).stdout) for _ in range(2)]
    summed, once = bench.memory_together(uses)
    assert all(use["peak_mb"] > sum(use["files_mb"].values()) > 5.0 for use in uses)  # python, libc, numpy, OpenBLAS
    assert summed - min(sum(use["files_mb"].values()) for use in uses) <= once < summed
