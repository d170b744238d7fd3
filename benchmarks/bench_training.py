"""Training step of the same GPT in TinyGPT and PyTorch eager (see tinygpt/bench.py).

    python benchmarks/bench_training.py                      # both configurations of the README
    python benchmarks/bench_training.py --config large --steps 10
    python benchmarks/bench_training.py --quick              # smoke run
"""
import sys

from tinygpt.bench import main

if __name__ == "__main__":
    sys.exit(main())
