"""keep_freed_memory: the steps of a training run stop faulting pages in once freed blocks are kept."""
import subprocess
import sys

import pytest

STEP_FAULTS = """
import resource, sys
from tinygpt import bench
from tinygpt.memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
config = bench.CONFIGS["shakespeare-char-cpu"]
model, step = bench.tinygpt_stepper(config)
batches = bench.batches(config, 8)
for x, y in batches[:3]:
    step(x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for x, y in batches[3:]:
    step(x, y)
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_step(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, check=True, timeout=120)
    took, faults = out.stdout.split()
    return took, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_kept_memory_ends_the_page_faults_of_each_step():
    """Without the call (importing tinygpt does not make it) each step faults thousands of pages in."""
    took, kept = faults_per_step("keep")
    _, default = faults_per_step("default")
    assert took == "True"
    assert kept < 100 < default  # measured 6 against 3,200 per step of the CPU configuration

