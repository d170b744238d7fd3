"""Every benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_benchmark_runs_quick(script):
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ratio" in done.stdout.lower() or "/" in done.stdout, done.stdout


def test_tinygpt_bench_command_runs_quick():
    done = subprocess.run([sys.executable, "-m", "tinygpt", "bench", "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "throughput ratio tinygpt/torch" in done.stdout
