"""Every benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("bench_*.py"))
NUMBER = r"\d+(?:\.\d+)?"
# The lines each script prints only once it has measured both sides of its comparison.
SUMMARY_LINES = {
    "bench_compile": [rf"^cold compile: -?{NUMBER} s; a warm start adds -?{NUMBER} s$",
                      r"^\$ python benchmarks/bench_compile\.py --quick$"],
    "bench_instruments_off": [rf"^ratio \(instruments unused / baseline\): median {NUMBER}, range {NUMBER}-{NUMBER} over 1 rounds$",
                              r"^command: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_instruments_off\.py --quick$"],
    "bench_kernels": [rf"^\| all \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|$",
                      r"^\$ python benchmarks/bench_kernels\.py --quick$"],
    "bench_distributed": [rf"^  scaling efficiency, 2 ranks / \(2 x 1 rank\): tinygpt {NUMBER}, torch {NUMBER}$",
                          rf"^  tinygpt/torch on 2 ranks: {NUMBER}x$", r"^  goal \(2 ranks >= 1\.8x one rank, and >= torch DDP\): ",
                          r"^machine load before: ", r"^machine load after: ",
                          r"^command: python benchmarks/bench_distributed\.py --quick$"],
    "bench_generate": [rf"^\s+96\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$",
                       r"^reproduce with: python benchmarks/bench_generate\.py --quick$"],
    "bench_nanogpt_loss": [rf"^val loss over 4,096 tokens: tinygpt {NUMBER}  nanoGPT {NUMBER}  difference [+-]{NUMBER}$",
                           r"^reproduce: python benchmarks/bench_nanogpt_loss\.py --seed 1337 --gelu tanh --quick$"],
    "bench_ops": [rf"^  tinygpt / torch\s+{NUMBER}x$", rf"^  with grad: tinygpt / torch\s+{NUMBER}x$",
                  r"outputs and gradients checked equal$", r"^reproduce: .*python benchmarks/bench_ops\.py --quick$"],
    "bench_speedrun": [r"^  time to 1\.88, tinygpt / nanoGPT: .+$",
                       rf"^  in nanoGPT's {NUMBER} s of training, the preset \(\d+ iterations, {NUMBER} s\) reaches "
                       rf"whole-split val loss {NUMBER}$",
                       r"^goal \(tinygpt <= 0\.5x nanoGPT's time to 1\.88\): met for \d of 1 seeds$",
                       r"^command: python benchmarks/bench_speedrun\.py --quick$"],
    "bench_tokenizer": [rf"^  vocab\s+512\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$",
                        rf"^  vocab\s+512 \(\s*\d+ ids\)(\s+{NUMBER}){{3}}\s+{NUMBER}x\s+{NUMBER}x$",
                        r"^ids identical to tiktoken's: yes$"],
    "bench_training": [rf"^  throughput ratio tinygpt/torch: {NUMBER}x, peak memory ratio tinygpt/torch: {NUMBER}$",
                       r"^command: tinygpt bench --quick$", r"^machine load before: ", r"^machine load after: ",
                       rf"^  per-round ratios {NUMBER}-{NUMBER} over 1 rounds: spread 0.0%, within 5%$"],
}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_benchmark_runs_quick_and_prints_its_ratios(script):
    assert script.stem in SUMMARY_LINES, f"{script.name}: add the summary lines it prints to SUMMARY_LINES"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for line in SUMMARY_LINES[script.stem]:
        assert re.search(line, done.stdout, re.MULTILINE), f"{script.name}: no line matching {line!r} in\n{done.stdout}"


def test_tinygpt_bench_command_runs_quick():
    done = subprocess.run([sys.executable, "-m", "tinygpt", "bench", "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "throughput ratio tinygpt/torch" in done.stdout


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


def test_bench_adds_rounds_until_the_ratios_agree():
    from tinygpt import bench

    assert not bench.rounds_are_enough([1.0, 1.2, 1.0], minimum=3, maximum=6)
    assert bench.rounds_are_enough([1.0, 1.02, 0.99], minimum=3, maximum=6)
    assert not bench.rounds_are_enough([1.0], minimum=3, maximum=6)
    assert bench.rounds_are_enough([1.0, 1.5, 1.0, 1.5, 1.0, 1.5], minimum=3, maximum=6)
    assert bench.spread([1.0, 1.1, 0.9]) == pytest.approx(0.2)
