"""Peak memory of `tinygpt train` on one text with three kinds of line ending: LF, CRLF, and no newline at all.

The text is Tiny Shakespeare repeated to --megabytes; the CRLF corpus replaces each "\\n" with "\\r\\n" and the
single-line corpus with " ". Each round runs `tinygpt train` once per corpus (the order rotating between rounds),
each in a fresh process with a fresh token cache, for one iteration of a tiny model (the tokenising dominates),
and reads the peak resident memory of the whole command (its process, getrusage of the child). Printed: the
median and spread of each corpus's peak, and its ratio to LF's median.

    python benchmarks/bench_corpus_memory.py --megabytes 300 --rounds 3
    python benchmarks/bench_corpus_memory.py --megabytes 20 --rounds 1      # a smoke run
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tinygpt.dataset import default_corpus_path

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "256", "--max-iters",
        "1", "--eval-interval", "1", "--eval-iters", "1", "--warmup-iters", "0", "--sample-tokens", "0"]
LINE_ENDS = {"LF": "\n", "CRLF": "\r\n", "one line": " "}


def peak_rss_mib(corpus: Path, work: Path, name: str) -> float:
    """Train once on corpus in a fresh process and token cache; the peak RSS of that process, MiB."""
    cache, out_dir = work / f"cache-{name}", work / f"out-{name}"
    subprocess.run(["rm", "-rf", str(cache), str(out_dir)], check=True)
    command = [sys.executable, "-c", "import resource, sys; from tinygpt.cli import main; status = main(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(status)",
               "train", "--data", str(corpus), "--out-dir", str(out_dir), *TINY]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"TINYGPT_CACHE_DIR": str(cache)})
    if result.returncode != 0:
        raise SystemExit(f"{name}: {result.stderr[-2000:]}")
    return int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 MB, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.rounds = 2, 1
    text = default_corpus_path().read_text(encoding="utf-8")
    size = args.megabytes * 1_000_000
    text = (text * (size // len(text) + 1))[:size]
    peaks = {name: [] for name in LINE_ENDS}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        for name, end in LINE_ENDS.items():
            (work / f"{len(end)}-{end == ' '}.txt").write_bytes(text.replace("\n", end).encode("utf-8"))
        names = list(LINE_ENDS)
        for round_ in range(args.rounds):
            for name in names[round_ % 3:] + names[:round_ % 3]:
                end = LINE_ENDS[name]
                peaks[name].append(peak_rss_mib(work / f"{len(end)}-{end == ' '}.txt", work, name.replace(" ", "-")))
                print(f"round {round_ + 1}: {name}: {peaks[name][-1]:,.0f} MiB", file=sys.stderr, flush=True)
    lf = statistics.median(peaks["LF"])
    print(f"| corpus ({args.megabytes} MB of text) | peak RSS, median (MiB) | spread (MiB) | vs LF |")
    print("|---|---|---|---|")
    for name, values in peaks.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {median / lf:.2f}x |")
    print(f"\n{args.rounds} rounds; command: python benchmarks/bench_corpus_memory.py --megabytes {args.megabytes} "
          f"--rounds {args.rounds}")


if __name__ == "__main__":
    main()
