"""BPETokenizer against its peers on Tiny Shakespeare.

Training: ours vs Hugging Face `tokenizers` (BpeTrainer, the same GPT-4 split regex, then the
ByteLevel pre-tokenizer), at vocab 1,024 and 4,096. Encoding: ours vs tiktoken loaded with our
merges (same pattern), in MB/s, asserting identical ids. Ours is timed with an empty chunk cache
("cold", the first pass over a text) and with the cache filled ("warm", every later pass).
Each time is the best of --repeats runs.

    python benchmarks/bench_tokenizer.py            # the full run
    python benchmarks/bench_tokenizer.py --quick    # a smoke run on 100 kB, vocab 300 and 512
"""

import argparse
import os
import platform
import sys
import time

import tiktoken
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from tinygpt.dataset import default_corpus_path
from tinygpt.tokenizer import BPETokenizer, RegexPatterns


def best_time(function, repeats: int, before_each=lambda: None) -> float:
    """The fastest of `repeats` runs of `function()`, in seconds."""
    times = []
    for _ in range(repeats):
        before_each()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on 100 kB of text")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best is kept)")
    args = parser.parse_args()

    text = default_corpus_path().read_text(encoding="utf-8")
    vocab_sizes = (1024, 4096)
    if args.quick:
        text, vocab_sizes = text[:100_000], (300, 512)
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, corpus {megabytes:.2f} MB, "
          f"best of {args.repeats}")

    print("\ntraining (GPT-4 pattern)      ours (s)   HF tokenizers (s)   ours / HF")
    trained = {}
    for vocab_size in vocab_sizes:
        ours = best_time(lambda: trained.__setitem__(vocab_size, train_ours(text, vocab_size)), args.repeats)
        hugging_face = best_time(lambda: train_hugging_face(text, vocab_size), args.repeats)
        print(f"  vocab {vocab_size:>5}                {ours:8.3f}   {hugging_face:17.3f}   {ours / hugging_face:9.2f}x")

    print("\nencoding the corpus           ours cold MB/s   ours warm MB/s   tiktoken MB/s   "
          "cold / tiktoken   warm / tiktoken")
    for vocab_size, tokenizer in trained.items():
        oracle = tiktoken.Encoding(
            name=f"tinygpt-{vocab_size}", pat_str=tokenizer.pattern, special_tokens={},
            mergeable_ranks={tokenizer.vocab[index]: index for index in range(vocab_size)})
        expected = oracle.encode_ordinary(text)
        assert tokenizer.encode(text) == expected, "ids differ from tiktoken's"
        cold = best_time(lambda: tokenizer.encode(text), args.repeats,
                         before_each=lambda: tokenizer._chunk_cache.clear())
        warm = best_time(lambda: tokenizer.encode(text), args.repeats)
        peer = best_time(lambda: oracle.encode_ordinary(text), args.repeats)
        print(f"  vocab {vocab_size:>5} ({len(expected):>7} ids)   {megabytes / cold:14.2f}   "
              f"{megabytes / warm:14.2f}   {megabytes / peer:13.2f}   {peer / cold:14.2f}x   {peer / warm:14.2f}x")
    print("\nids identical to tiktoken's: yes")


if __name__ == "__main__":
    main()
