"""BPETokenizer against its peers on three corpora: Tiny Shakespeare, code (the Python standard library's
own .py files, English prose in docstrings and comments) and multilingual text (the standard library's
UTF-8 test texts in Chinese, Japanese and Korean, and every line of its .py files that holds a character
beyond Latin: Cyrillic, Greek, Arabic, Hebrew, Thai, CJK, emoji...).

Training: ours vs Hugging Face `tokenizers` (BpeTrainer, the same GPT-4 split regex, then the ByteLevel
pre-tokenizer) on the same text and vocab size. Encoding: ours vs tiktoken built with our merges
(`tiktoken.Encoding` with `mergeable_ranks` from our vocabulary, the same pattern), in MB/s, the ids
compared every round. Ours is timed "cold" (a fresh BPETokenizer with the trained merges: the first pass
over the text, an empty chunk cache; numba's kernels are loaded once per process, before the rounds)
and "warm" (the second pass). Each of --repeats rounds times every side once, the order of the sides
alternating between rounds; printed are the median and the spread (min-max) of the wall times.

With --baseline-src DIR (the src/ of an earlier checkout), training, encoding and the two pathological
vocabularies (24 doubling merges `a`+`a`, ...; a tokenizer trained on an `abab...` line) are also timed
for that source tree and for this one in the same run, on Tiny Shakespeare: --repeats times each, every
time in a fresh subprocess (with the same hash seed), the two trees taking turns (which goes first
alternates, so a change in the machine's load falls on both). Each is timed in CPU seconds of its process;
printed are the median and the spread (min-max) of each tree, and the ratio of the medians.

    python benchmarks/bench_tokenizer.py            # the full run: 1 MB of each corpus, vocab 2,048, 5 rounds
    python benchmarks/bench_tokenizer.py --quick    # a smoke run on 100 kB, vocab 512
    mkdir /tmp/baseline && git archive HEAD~1 src | tar -x -C /tmp/baseline
    python benchmarks/bench_tokenizer.py --repeats 5 --baseline-src /tmp/baseline/src
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import tiktoken
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from tinygpt.dataset import default_corpus_path
from tinygpt.tokenizer import BPETokenizer, RegexPatterns


CORPUS_CHARACTERS = 1_000_000


def corpora(characters: int = CORPUS_CHARACTERS) -> dict[str, str]:
    """The three corpora, at most `characters` long each (whole lines, spread evenly over each source).

    Python's standard library holds about 60,000 characters of the multilingual kind (the corpus is that
    long at most): the UTF-8 test texts of its CJK codecs, each line of its modules and tests with a character
    beyond Latin (Cyrillic, Greek, Arabic, CJK, emoji...), and the letters of its single-byte codecs for
    other scripts (Thai, Hebrew, Arabic...), decoded, first. Installed packages are left out: they differ by
    machine.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    own = [path for path in sorted(stdlib.rglob("*.py")) if not {"site-packages", "dist-packages"} & set(path.parts)]
    code = "".join(path.read_text(encoding="utf-8", errors="replace") for path in own if path.parent == stdlib)
    multilingual = [bytes(range(160, 256)).decode(codec, errors="ignore") + "\n" for codec in
                    ("cp874", "cp1255", "cp1256", "cp1251", "cp1253", "koi8_u", "tis_620", "iso8859_6", "iso8859_8")]
    multilingual += [path.read_text(encoding="utf-8") for path in sorted(stdlib.glob("test/cjkencodings/*-utf8.txt"))]
    for path in own:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a test file in another encoding, on purpose
        multilingual += [line for line in text.splitlines(keepends=True) if any(ord(c) > 0x2FF for c in line)]
    texts = {"shakespeare": default_corpus_path().read_text(encoding="utf-8"), "code": code,
             "multilingual": "".join(multilingual)}
    return {name: spread_lines(text, characters) for name, text in texts.items()}


def spread_lines(text: str, characters: int) -> str:
    """At most `characters` of `text`: all of it if it fits, else blocks of 64 whole lines at even steps."""
    lines = text.splitlines(keepends=True)
    blocks = range(0, len(lines), 64)
    step = len(text) / characters
    if step > 1:
        blocks = [blocks[int(index * step)] for index in range(int(len(blocks) / step))]
    return "".join(line for start in blocks for line in lines[start:start + 64])[:characters]


def rounds(sides: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each side over `repeats` rounds; each round runs every side once, the order
    reversed every other round."""
    times = {name: [] for name in sides}
    for repeat in range(repeats):
        for name in sorted(sides, reverse=repeat % 2 == 1):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return times


def train_hugging_face(text: str, vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # Oniguruma reads `{1,3}+` as "one or more of {1,3}", not as possessive: drop the `+` there.
    split_pattern = RegexPatterns.GPT4.replace("{1,3}+", "{1,3}")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def train_ours(text: str, vocab_size: int) -> BPETokenizer:
    tokenizer = BPETokenizer(RegexPatterns.GPT4)
    tokenizer.train(text, vocab_size)
    return tokenizer


def pathological_models(directory: Path, quick: bool) -> dict[str, tuple[Path, str]]:
    """The two vocabularies of very long tokens as .model files, each with 2,000 characters to encode."""
    doubling = directory / "doubling.model"
    merges = ["97 97"] + [f"{255 + index} {255 + index}" for index in range(1, 24)]
    doubling.write_text("\n".join(["tinygpt-bpe v1", json.dumps(RegexPatterns.GPT4), "special_tokens 0",
                                   f"merges {len(merges)}", *merges]) + "\n", encoding="utf-8")
    abab = BPETokenizer(RegexPatterns.GPT4)
    abab.train("ab" * ((1 << 15) if quick else 3_000_000), 300)  # a 64 kB (quick) or 6 MB line
    abab.save(directory / "abab")
    return {"24 doubling merges": (doubling, many_distinct_chunks("a")),
            "abab tokenizer": (directory / "abab.model", many_distinct_chunks("ab"))}


def many_distinct_chunks(unit: str) -> str:
    """2,000 characters of ~250 distinct chunks ` <unit * k><letter>`: enough to take the batched encode path."""
    letters = "cdefghijklmnopqrstuvwxyz"
    return "".join(f" {unit * (index % 13 + 1)}{letters[index % len(letters)]}" for index in range(400))[:2000]


def cpu_seconds(function) -> float:
    """The CPU time of one run of `function()` in this process: unlike the wall time, it does not count the
    time other processes hold the core, and the code timed here runs on one thread."""
    start = time.process_time()
    function()
    return time.process_time() - start


def load_numba_loops() -> None:
    """numba's loops (the scanner's, the encoder's) loaded once per process, before anything is timed."""
    tokenizer = BPETokenizer()
    tokenizer.train("warm up numba's kernels: héllo wörld 123 😀", 300)
    tokenizer.encode("load them before the rounds, ça va 42")


def measure(text: str, vocab_sizes: tuple[int, ...], models: dict[str, list[str]]) -> dict[str, float]:
    """CPU seconds of training, of cold and then warm encoding at each vocab size, and of encoding with each
    model (one run each)."""
    load_numba_loops()
    seconds = {}
    for vocab_size in vocab_sizes:
        trained = {}
        seconds[f"train vocab {vocab_size}"] = cpu_seconds(lambda: trained.setdefault(0, train_ours(text, vocab_size)))
        tokenizer = trained[0]
        seconds[f"encode vocab {vocab_size} cold"] = cpu_seconds(lambda: tokenizer.encode(text))
        seconds[f"encode vocab {vocab_size} warm"] = cpu_seconds(lambda: tokenizer.encode(text))
    for name, (model_file, sample) in models.items():
        tokenizer = BPETokenizer()
        tokenizer.load(model_file)
        seconds[f"encode 2,000 characters, {name}"] = cpu_seconds(lambda: tokenizer.encode(sample))
    return seconds


def measure_in_subprocess(src: str, args: argparse.Namespace, models: dict, timeout: float,
                          skipped: set[str]) -> dict[str, float | None]:
    """One run of `measure` with the tinygpt of `src`, each part in a fresh interpreter; None for the
    measurements of a part that did not finish in time (it is added to `skipped` and not run again)."""
    request = json.dumps({"quick": args.quick,
                          "models": {name: [str(path), sample] for name, (path, sample) in models.items()}})
    seconds = {}
    for part in ("corpus", *models):
        if part in skipped:
            continue
        try:
            result = subprocess.run([sys.executable, __file__, "--worker", part], input=request, text=True,
                                    capture_output=True, timeout=timeout,
                                    env=os.environ | {"PYTHONPATH": src, "PYTHONHASHSEED": "0"})
        except subprocess.TimeoutExpired:
            skipped.add(part)
            continue
        if result.returncode:
            raise SystemExit(f"the worker for {src} failed:\n{result.stderr}")
        seconds.update(json.loads(result.stdout))
    return seconds


def worker(subset: str) -> None:
    """Run one part of `measure` as a JSON request on stdin asks; print the seconds as JSON."""
    request = json.loads(sys.stdin.read())
    text, vocab_sizes = corpus(request["quick"])
    if subset == "corpus":
        seconds = measure(text, vocab_sizes, {})
    else:
        path, sample = request["models"][subset]
        seconds = measure(text, (), {subset: (Path(path), sample)})
    print(json.dumps(seconds))


def corpus(quick: bool) -> tuple[str, tuple[int, ...]]:
    text = default_corpus_path().read_text(encoding="utf-8")
    return (text[:100_000], (300, 512)) if quick else (text, (1024, 4096))


def compare_with_baseline(args: argparse.Namespace) -> None:
    """Time the baseline source tree and this one, taking turns, and print both with the ratio of the medians."""
    trees = {"baseline": args.baseline_src, "current": str(Path(__file__).resolve().parents[1] / "src")}
    runs = {tree: [] for tree in trees}
    skipped = {tree: set() for tree in trees}
    with tempfile.TemporaryDirectory() as directory:
        models = pathological_models(Path(directory), args.quick)
        for repeat in range(args.repeats):
            for tree in sorted(trees, reverse=repeat % 2 == 1):
                runs[tree].append(measure_in_subprocess(trees[tree], args, models, args.baseline_timeout, skipped[tree]))
    print(f"\nagainst the baseline {args.baseline_src} (CPU seconds: median and spread (min-max) of {args.repeats} "
          f"runs, the trees taking turns)")
    print(f"  {'measurement':<44} {'baseline':>22} {'current':>22}   current / baseline")
    names = dict.fromkeys(name for tree in trees for run in runs[tree] for name in run)
    for name in names:
        baseline, current = (summary([run.get(name) for run in runs[tree]]) for tree in trees)
        ratio = f"{current[0] / baseline[0]:9.2f}x" if baseline and current else "       -"
        print(f"  {name:<44} {shown(baseline, args.baseline_timeout)} {shown(current, args.baseline_timeout)}   {ratio}")


def summary(times: list[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of `times`, None if some run did not finish."""
    if None in times:
        return None
    return statistics.median(times), min(times), max(times)


def shown(times: tuple[float, float, float] | None, timeout: float) -> str:
    """`median (min-max)`, or that the runs took longer than `timeout`."""
    text = f"> {timeout:.0f} s" if times is None else f"{times[0]:.4f} ({times[1]:.4f}-{times[2]:.4f})"
    return text.rjust(22)


def compare_encoding(text: str, trained: BPETokenizer, repeats: int) -> tuple[int, dict[str, list[float]]]:
    """The number of ids, and the wall seconds of ours cold and warm and of tiktoken with the same merges."""
    oracle = tiktoken.Encoding(name="tinygpt", pat_str=trained.pattern, special_tokens={},
                               mergeable_ranks={trained.vocab[index]: index for index in range(256 + len(trained.merges))})
    expected = oracle.encode_ordinary(text)
    fresh = {}

    def cold():
        fresh[0] = BPETokenizer(trained.pattern)
        fresh[0].merges = trained.merges
        assert fresh[0].encode(text) == expected, "ids differ from tiktoken's"

    def warm():
        assert fresh[0].encode(text) == expected, "ids differ from tiktoken's"

    sides = {"cold": cold, "warm": warm, "tiktoken": lambda: oracle.encode_ordinary(text)}
    times = {name: [] for name in sides}
    for repeat in range(repeats):  # cold then warm, with tiktoken after them or before them
        for name in ("cold", "warm", "tiktoken") if repeat % 2 == 0 else ("tiktoken", "cold", "warm"):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return len(expected), times


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on 100 kB of each corpus, vocab 512")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per measurement (median and spread)")
    parser.add_argument("--baseline-src", metavar="DIR", help="also time the tinygpt of this src/ directory")
    parser.add_argument("--baseline-timeout", type=float, default=600, metavar="S",
                        help="seconds each baseline part may take before it is reported as timed out")
    parser.add_argument("--worker", metavar="PART", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    texts = corpora(100_000 if args.quick else CORPUS_CHARACTERS)
    vocab_size = 512 if args.quick else 2048
    print(f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, GPT-4 pattern, vocab {vocab_size}, "
          f"{args.repeats} rounds: median (min-max) of wall seconds")
    load_numba_loops()
    ratios = {}
    for name, text in texts.items():
        megabytes = len(text.encode("utf-8")) / 1e6
        print(f"\n{name} ({megabytes:.2f} MB)")
        trained = {}
        times = rounds({"ours": lambda: trained.__setitem__(0, train_ours(text, vocab_size)),
                        "hf": lambda: train_hugging_face(text, vocab_size)}, args.repeats)
        ours, hugging_face = (statistics.median(times[side]) for side in ("ours", "hf"))
        print(f"  training      ours {spread(times['ours'])} s   HF tokenizers {spread(times['hf'])} s")
        print(f"  vocab {vocab_size:>5}   {ours:8.3f}   {hugging_face:8.3f}   {ours / hugging_face:6.2f}x")
        count, times = compare_encoding(text, trained[0], args.repeats)
        medians = {side: statistics.median(seconds) for side, seconds in times.items()}
        print(f"  encoding      cold {spread(times['cold'])} s   warm {spread(times['warm'])} s   "
              f"tiktoken {spread(times['tiktoken'])} s")
        print(f"  vocab {vocab_size:>5} ({count:>7} ids)   {megabytes / medians['cold']:8.2f}   "
              f"{megabytes / medians['warm']:8.2f}   {megabytes / medians['tiktoken']:8.2f}   "
              f"{medians['tiktoken'] / medians['cold']:6.2f}x   {medians['tiktoken'] / medians['warm']:6.2f}x")
        ratios[name] = (hugging_face / ours, medians["tiktoken"] / medians["cold"], medians["tiktoken"] / medians["warm"])
    print("\n| corpus | train: HF time / ours | encode cold: ours / tiktoken speed | encode warm: ours / tiktoken speed |")
    print("|---|---|---|---|")
    for name, (train, cold, warm) in ratios.items():
        print(f"| {name} | {train:.2f}x | {cold:.2f}x | {warm:.2f}x |")
    print("\nids identical to tiktoken's: yes")
    if args.baseline_src:
        compare_with_baseline(args)


if __name__ == "__main__":
    main()
