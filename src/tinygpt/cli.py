"""The `tinygpt` command: argument parsing, then calls into train.py, the sampler and the tokenizer.

    tinygpt train [--preset NAME] [--n-layer N ...] [--resume]     train a GPT (default: Tiny Shakespeare, bytes)
    tinygpt sample --out-dir DIR --prompt TEXT|FILE:path           continue a prompt, printed as it is generated
    tinygpt export --out-dir DIR --to PATH                         a checkpoint as a Hugging Face GPT-2 directory
    tinygpt eval --out-dir DIR [--data FILE]                       whole-file loss and bits per byte
    tinygpt tokenizer train|encode|decode ...                      train and use a BPE tokenizer
    tinygpt bench [...]                                            a training step against PyTorch
    tinygpt profile [train's flags] [--steps N]                     a few training steps timed op by op, FLOPs, MFU
    tinygpt attention --out-dir DIR --prompt TEXT [--layer N]      every head's attention map for a prompt

Bad input (a missing or empty file, a block size larger than the data, an unknown preset, a checkpoint
of another architecture or a corrupt one, `--device cuda` without CuPy) ends with one line on stderr
and exit status 1; a malformed command line with one line and status 2. Under mpiexec, any error on a
rank stops every rank (MPI abort) with one line that names the rank.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import tinygpt
from tinygpt.checkpoint import CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR, STAGING_PREFIX, STATE_FILE
from tinygpt.dataset import default_corpus_path, read_corpus_text
from tinygpt.distributed import (RANKS_VARIABLE, get_world, launch_ranks, launched_by_mpi, requested_ranks,
                                 why_mpi_cannot_start)
from tinygpt.files import PROMPT_FILE_BYTES, TOKENIZER_FILE_BYTES, decode_utf8, read_stream, regular_file
from tinygpt.flags import OneLineParser, add_setting_flags
from tinygpt.tokenizer import save_gpt2_tokenizer
from tinygpt.tokenizer.gpt2 import END_OF_TEXT, MERGES_FILE, VOCAB_FILE
from tinygpt.instruments.commands import attention_picture, profile_training
from tinygpt.sampling import printable, read_prompt, stream_text
from tinygpt.tokenizer import SPLIT_PATTERNS, BPETokenizer
from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import (PRESETS, ConfigError, TrainConfig, as_config_error, check_device, flag_spelling,
                            read_config_file, setting_schema)
from tinygpt.evaluation import evaluate_checkpoint
from tinygpt.interrupts import TrainingInterrupted
from tinygpt.train import resolve_config, train

PATTERNS = {name: known.pattern for name, known in SPLIT_PATTERNS.items()}


def add_command(subparsers, name: str, handler, help: str, **described) -> argparse.ArgumentParser:
    """The parser of `tinygpt <name>`, which runs handler(args); its --help describes it with the handler's docstring
    (or description=)."""
    described.setdefault("description", inspect.cleandoc(handler.__doc__) if handler and handler.__doc__ else help)
    parser = subparsers.add_parser(name, help=help, **described)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_train_parser(subparsers) -> None:
    parser = add_command(subparsers, "train", run_train, help="train a GPT on a text file (default: the embedded Tiny Shakespeare)")
    add_run_settings(parser)
    add_ranks_argument(parser)


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """A run's settings, as `train` and `profile` take them: --preset, --config FILE, then a flag per setting."""
    parser.add_argument("--preset", choices=tuple(PRESETS), help="a known configuration (default: none, the defaults "
                        "below; shakespeare-char-gpu needs --device cuda, which has not run on a GPU yet)")
    parser.add_argument("--config", metavar="FILE", help="a .toml or .json file of settings named as the flags "
                        "with underscores (n_layer = 4); flags given override it")
    add_setting_flags(parser, setting_schema())


def add_ranks_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", type=int, metavar="N", help="processes to split the work among, one thread each "
                        f"(default: {RANKS_VARIABLE}, else one per core that divides the batch; 1: one process)")


def ranks_to_start(args: argparse.Namespace, batch_size: int | None, device: str) -> int:
    """How many ranks the command starts under MPI (distributed.launch_ranks): one per core that splits the batch,
    or --ranks; 1, to work in this process, where MPI started it already or the work runs on a GPU. Where MPI
    cannot start, one warning, and 1."""
    if launched_by_mpi() or device != "cpu":
        return 1
    with as_config_error():
        ranks = requested_ranks(args.ranks, batch_size)
    reason = why_mpi_cannot_start() if ranks > 1 else None
    if reason is not None:
        print(f"tinygpt: warning: {reason}: running in one process", file=sys.stderr)
        return 1
    return ranks


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a `tinygpt train` command line: defaults, checkpoint, preset, config file, flags."""
    flags = {key: value for key, value in vars(args).items()
             if key not in ("command", "handler", "preset", "config", "ranks", "argv")}
    file_settings = read_config_file(args.config) if args.config else {}
    return resolve_config(file_settings | flags, args.preset)


def run_train(args: argparse.Namespace) -> int:
    """Train a GPT. Settings are, from weakest to strongest: the defaults (the shakespeare-char-cpu preset),
    with --resume the checkpoint's, --preset, --config FILE, then the flags given. Every flag is also spelt as
    nanoGPT's (--n_layer=4)."""
    config = train_config(args)
    config.validate()
    ranks = ranks_to_start(args, config.batch_size, config.device)
    if ranks > 1:
        return launch_ranks(ranks, args.argv)
    train(config)
    return 0


def add_profile_parser(subparsers) -> None:
    parser = add_command(subparsers, "profile", run_profile, help="time a few training steps op by op, with FLOPs and MFU")
    parser.add_argument("--steps", type=int, default=3, metavar="N", help="profiled steps (default: 3)")
    add_run_settings(parser)


def run_profile(args: argparse.Namespace) -> int:
    """Run --steps training steps of the run `tinygpt train` would run with the same flags (after two warm-up
    steps) and print where the time goes, by op and by module, with each row's FLOPs and the MFU
    (docs/instruments.md)."""
    steps = vars(args).pop("steps")  # profile's own flag, not a training setting
    timed = profile_training(train_config(args), steps)
    print(f"{steps} training steps\n\n{timed.table()}\n\n{timed.table(by='module')}")
    return 0


def add_attention_parser(subparsers) -> None:
    parser = add_command(subparsers, "attention", run_attention, help="draw every head's attention map for a prompt")
    add_out_dir_argument(parser)
    parser.add_argument("--prompt", required=True, help="the text whose attention to draw")
    parser.add_argument("--layer", type=int, metavar="N", help="only this layer (default: all)")
    parser.add_argument("--to", metavar="PATH", help="the picture to write, .png or .svg (default: OUT_DIR/attention.png)")
    add_device_argument(parser)


def run_attention(args: argparse.Namespace) -> int:
    """Draw the attention probabilities of every head of the checkpoint in --out-dir (every layer, or --layer)
    for a prompt, as heat maps with the tokens on the axes."""
    path, _ = attention_picture(args.out_dir, args.prompt, args.to, args.layer, args.device)
    print(f"wrote {path}")
    return 0


def add_out_dir_argument(parser: argparse.ArgumentParser) -> None:
    """--out-dir, the directory of the checkpoint a command reads."""
    parser.add_argument("--out-dir", metavar="DIR", default="out", help="directory of the checkpoint (default: out)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (cuda needs "
                        "CuPy; default: cpu)")


def add_sample_parser(subparsers) -> None:
    parser = add_command(subparsers, "sample", run_sample, help="continue a prompt with the model of a checkpoint")
    add_out_dir_argument(parser)
    parser.add_argument("--prompt", "--start", dest="prompt", default="\n", help="text to continue, or FILE:path for the "
                        "text of a file, as nanoGPT's sample.py --start (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to generate (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, metavar="K", help="sample among the K likeliest tokens "
                        "(0: all; default: 200)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="then among the likeliest tokens whose "
                        "probabilities sum to P (nucleus sampling, 0 < P <= 1; default: off)")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw, one after another "
                        "(default: 1)")
    parser.add_argument("--seed", type=int, default=1337, metavar="N", help="random seed of the first sample, the next "
                        "ones take seed + 1, ... (default: 1337)")
    add_device_argument(parser)


def check_sample_arguments(args: argparse.Namespace) -> None:
    """ConfigError naming the first argument of `tinygpt sample` out of its range, and that one alone."""
    wrong = {"--max-new-tokens": (args.max_new_tokens < 0, ">= 0"), "--num-samples": (args.num_samples < 1, ">= 1"),
             "--temperature": (not 0.0 <= args.temperature < math.inf, "a finite number >= 0 (0 is greedy)"),
             "--top-k": (args.top_k < 0, ">= 0 (0: all tokens)"), "--seed": (args.seed < 0, ">= 0"),
             "--top-p": (args.top_p is not None and not 0.0 < args.top_p <= 1.0, "in (0, 1]")}
    for flag, (is_wrong, expected) in wrong.items():
        if is_wrong:
            raise ConfigError(f"{flag} must be {expected}, got {getattr(args, flag[2:].replace('-', '_'))}")


def run_sample(args: argparse.Namespace) -> int:
    """Sample text from the checkpoint that `tinygpt train` left in --out-dir, printed as it is generated."""
    check_sample_arguments(args)
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError(f"the prompt is not UTF-8 text (an undecodable byte at character {error.start})") from None
    check_device(args.device)
    with as_config_error():
        prompt = read_prompt(args.prompt)
    checkpoint = load_checkpoint(args.out_dir)
    model = checkpoint.load_model(args.device)
    shown = printable if sys.stdout.isatty() else str  # a terminal gets control bytes escaped; a file, the text itself
    for index in range(args.num_samples):
        if index:
            print("---------------")
        with as_config_error():
            for piece in stream_text(model, checkpoint.tokenizer, prompt, args.max_new_tokens, args.temperature,
                                     args.top_k or None, args.top_p, seed=args.seed + index, device=args.device):
                sys.stdout.write(shown(piece))
                sys.stdout.flush()
        print(flush=True)
    return 0


def add_export_parser(subparsers) -> None:
    parser = add_command(subparsers, "export", run_export, help="write a checkpoint as a Hugging Face GPT-2 directory")
    add_out_dir_argument(parser)
    parser.add_argument("--to", metavar="PATH", required=True, help="the Hugging Face directory to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a --to directory that holds files, "
                        "replacing the export's own files there")


def run_export(args: argparse.Namespace) -> int:
    """Write the checkpoint in --out-dir as a directory that transformers' GPT2LMHeadModel.from_pretrained and
    AutoTokenizer.from_pretrained load: config.json, model.safetensors, tokenizer.json (and vocab.json +
    merges.txt for GPT-2's pattern)."""
    checkpoint = load_checkpoint(args.out_dir)
    refuse_checkpoint_target(Path(args.to))
    refuse_files_in(Path(args.to), args.overwrite)
    model = checkpoint.load_model()
    end_of_text = checkpoint.tokenizer.special_tokens.get(END_OF_TEXT)
    if end_of_text is not None and end_of_text >= model.config.vocab_size:
        raise ConfigError(f"the tokenizer's {END_OF_TEXT} has the id {end_of_text}, beyond the model's vocabulary of "
                          f"{model.config.vocab_size}: transformers could not generate it")
    with as_config_error():
        model.save_gpt2_checkpoint(args.to, end_of_text)
        written = save_gpt2_tokenizer(checkpoint.tokenizer, args.to)
    print(f"wrote {args.to}: config.json, model.safetensors, {', '.join(path.name for path in written)}")
    return 0


def refuse_checkpoint_target(target: Path) -> None:
    """Export never writes into a TinyGPT checkpoint (its config.json would replace the checkpoint's)."""
    if (target / STATE_FILE).exists() or target.name in (CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR) or \
            target.name.startswith(STAGING_PREFIX):
        raise ConfigError(f"--to {target} is a TinyGPT checkpoint directory: export to a directory of its own")


def refuse_files_in(target: Path, overwrite: bool) -> None:
    """As `train` into a checkpoint's out dir, export into a directory that holds anything needs --overwrite; then
    the files of an earlier export that this one does not write (vocab.json, merges.txt) go."""
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ConfigError(f"--to {target} already holds files: replace them with --overwrite, or give another --to")
        for name in (VOCAB_FILE, MERGES_FILE):
            (target / name).unlink(missing_ok=True)
    elif target.exists() and not target.is_dir():
        raise ConfigError(f"--to {target} is a file, not a directory")


def add_eval_parser(subparsers) -> None:
    parser = add_command(subparsers, "eval", run_eval, help="loss and bits per byte of a checkpoint over a whole text file")
    add_out_dir_argument(parser)
    parser.add_argument("--data", metavar="FILE", help="UTF-8 text file (default: the run's validation split)")
    add_device_argument(parser)
    add_ranks_argument(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint in --out-dir over every block-size window of --data (all of it), or by default of
    the run's validation split, whose loss then equals the final one `tinygpt train` printed."""
    ranks = ranks_to_start(args, None, args.device)
    if ranks > 1:
        return launch_ranks(ranks, args.argv)
    result = evaluate_checkpoint(args.out_dir, args.data, args.device)
    if get_world().is_main:
        print(f"loss {result['loss']:.4f} ({result['bpb']:.3f} bits/byte) over {result['tokens']:,} tokens of "
              f"{result['source']}, in {result['seconds']:.1f} s ({result['tokens'] / result['seconds']:,.0f} tokens/s)")
    return 0


def add_tokenizer_parser(subparsers) -> None:
    parser = add_command(subparsers, "tokenizer", None, help="train a BPE tokenizer, encode and decode with it",
                         description="Train, encode and decode with a BPETokenizer (prefix.model files).")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="{train,encode,decode}", required=True)
    trainer = add_command(commands, "train", run_tokenizer_train, help="learn merges from a text file, write PREFIX.model and PREFIX.vocab")
    trainer.add_argument("--data", metavar="PATH", help="UTF-8 text file (default: the embedded Tiny Shakespeare)")
    trainer.add_argument("--vocab-size", type=int, default=512, metavar="N", help="256 + number of merges (default: 512)")
    trainer.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4", help="pre-split regex (default: gpt4)")
    trainer.add_argument("--out", metavar="PREFIX", default="tokenizer", help="output prefix (default: tokenizer)")
    trainer.add_argument("--verbose", action="store_true", help="show the merges as they are learnt")
    encoder = add_command(commands, "encode", run_tokenizer_encode, help="print the ids of a text (--text, or stdin)")
    encoder.add_argument("--model", metavar="FILE", required=True, help="a .model file written by tokenizer train")
    encoder.add_argument("--text", help="text to encode (default: read stdin)")
    decoder = add_command(commands, "decode", run_tokenizer_decode, help="print the text of ids (arguments, or stdin)")
    decoder.add_argument("--model", metavar="FILE", required=True, help="a .model file written by tokenizer train")
    decoder.add_argument("ids", nargs="*", help="token ids (default: whitespace-separated ids on stdin)")


def read_text(path: Path) -> str:
    with as_config_error(FileNotFoundError):
        return read_corpus_text(path)


def read_stdin_text() -> str:
    """All of stdin as UTF-8 text, exactly as it came (no newline translation)."""
    with as_config_error():
        return decode_utf8(read_stream(sys.stdin.buffer, "stdin", PROMPT_FILE_BYTES), "stdin")


def load_tokenizer(path: str) -> BPETokenizer:
    if not Path(path).exists() and Path(f"{path}.model").is_file():  # the prefix `tokenizer train --out` took
        raise ConfigError(f"tokenizer model {path} does not exist: did you mean --model {path}.model?")
    tokenizer = BPETokenizer()
    with as_config_error(OSError):
        tokenizer.load(regular_file(path, "tokenizer model", TOKENIZER_FILE_BYTES))
    return tokenizer


def run_tokenizer_train(args: argparse.Namespace) -> int:
    path = Path(args.data) if args.data else default_corpus_path()
    text = read_text(path)
    tokenizer = BPETokenizer(PATTERNS[args.pattern])
    with as_config_error():
        tokenizer.train(text, args.vocab_size, verbose=args.verbose)
    tokenizer.save(args.out)
    print(f"wrote {args.out}.model and {args.out}.vocab: {len(tokenizer.merges)} merges, {len(tokenizer.vocab)} tokens")
    return 0


def run_tokenizer_encode(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.model)
    text = args.text if args.text is not None else read_stdin_text()
    with as_config_error():
        ids = tokenizer.encode(text, allowed_special="all")
    print(" ".join(map(str, ids)))
    return 0


def run_tokenizer_decode(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.model)
    words = args.ids or read_stdin_text().split()
    try:
        ids = [int(word) for word in words]
    except ValueError:
        raise ConfigError(f"token ids must be integers, got {' '.join(words)[:60]!r}") from None
    unknown = sorted({index for index in ids if index not in tokenizer.vocab})
    if unknown:
        raise ConfigError(f"ids {unknown[:10]} are not in the tokenizer's vocabulary of {len(tokenizer.vocab)} tokens")
    sys.stdout.write(tokenizer.decode(ids))
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tinygpt", description="TinyGPT: train a GPT from its own small parts, then sample it.")
    parser.add_argument("--version", action="version", version=f"tinygpt {tinygpt.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="{train,sample,eval,export,tokenizer,bench,profile,attention}",
                                       required=True, parser_class=OneLineParser)
    add_train_parser(subparsers)
    add_sample_parser(subparsers)
    add_eval_parser(subparsers)
    add_export_parser(subparsers)
    add_tokenizer_parser(subparsers)
    add_profile_parser(subparsers)
    add_attention_parser(subparsers)
    subparsers.add_parser("bench", help="time a training step against PyTorch eager and DDP (tinygpt bench --help)",
                          add_help=False)
    return parser


def fail(message: str) -> int:
    """Print the error as one line on stderr and return status 1; under mpiexec, name the rank and stop
    every rank (MPI abort), as the others would wait forever for this one."""
    message = message.replace("\n", " ")
    world = get_world() if launched_by_mpi() else None
    if world is not None and world.world_size > 1:
        world.abort(f"tinygpt: error: rank {world.rank} of {world.world_size}: {message}")
    print(f"tinygpt: error: {message}", file=sys.stderr)
    return 1


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of the command as one line, `tinygpt: warning: ...`, not Python's file, line and source."""
    try:
        print(f"tinygpt: warning: {message}", file=sys.stderr, flush=True)
    except OSError:  # stderr on a full disk: as Python's own showwarning, the command goes on
        pass


def interrupt(signum, frame) -> None:
    """SIGTERM stops the command as Ctrl-C does: the training loop saves a checkpoint (interrupts.deferred_interrupt),
    and elsewhere the exception unwinds through every cleanup (a half-written token cache is deleted)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from tinygpt import bench  # a PyTorch harness: imported only when run

        return bench.main(argv[1:])
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = argv
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, interrupt) if on_main_thread else None
    try:
        with flag_spelling(), warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.handler(args)
    except BrokenPipeError:  # the reader of stdout went away (`tinygpt sample | head`): nothing is left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit fails quietly too
        return 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe
    except (ConfigError, OSError) as error:
        return fail(str(error))
    except MemoryError as error:
        detail = f" ({error})" if str(error) else ""
        return fail(f"out of memory{detail}: less data or a smaller model needs less (--batch-size, --block-size, the "
                    "model's size); a tokenizer of more than 256 tokens is trained on its whole corpus in memory")
    except TrainingInterrupted as interrupted:
        if get_world().is_main:
            print(f"tinygpt: {interrupted}", file=sys.stderr)
        return 130
    except Exception as error:
        if not launched_by_mpi():
            raise
        return fail(f"{type(error).__name__}: {error}")  # the other ranks must not wait for this one forever
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main_thread:  # main() called from Python leaves the caller's handler as it was
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
