"""GPT-2's tokenizer files (vocab.json + merges.txt, or Hugging Face's tokenizer.json) read into a
BPETokenizer, and any BPETokenizer written in that format.

Both formats spell each token's bytes with GPT-2's byte-to-character table (`bytes_to_unicode`), list
the merges in the order they apply, and give every token an id of their own: the bytes are not at
ids 0..255 and special tokens may come first. A GPT2Tokenizer therefore encodes exactly as a
BPETokenizer with the same merges (ours: byte b is id b, merge i is id 256 + i) and renames the ids
at the boundary, so that its ids are the files' ids.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from tinygpt.serialization import atomic_write
from tinygpt.tensor import Tensor
from tinygpt.tokenizer.patterns import RegexPatterns
from tinygpt.tokenizer.tokenizer import BPETokenizer

VOCAB_FILE, MERGES_FILE, TOKENIZER_JSON = "vocab.json", "merges.txt", "tokenizer.json"
TOKENIZER_CONFIG, END_OF_TEXT = "tokenizer_config.json", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte gets a printable character (printable Latin-1 bytes keep their own)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def token_text(token: bytes) -> str:
    """A token's bytes as GPT-2's files spell them."""
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in token)


def token_bytes(text: str) -> bytes:
    """Inverse of token_text; a character outside GPT-2's table raises ValueError."""
    decoder = {character: byte for byte, character in bytes_to_unicode().items()}
    try:
        return bytes(decoder[character] for character in text)
    except KeyError as error:
        raise ValueError(f"token {text!r} has the character {error.args[0]!r}, which is not a GPT-2 byte") from None


class GPT2Tokenizer(BPETokenizer):
    """A BPETokenizer whose ids are those of a GPT-2 vocabulary: `file_ids[our_id]` is the file's id."""

    def __init__(self, pattern: str, merges: list[tuple[bytes, bytes]], vocab: dict[bytes, int],
                 special_tokens: dict[str, int]) -> None:
        super().__init__(pattern)
        ours = {bytes([byte]): byte for byte in range(256)}
        missing = [byte for byte in ours if byte not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the byte tokens {[token_text(bytes([b])) for b in missing[:5]]}")
        canonical = {}
        for rank, (first, second) in enumerate(merges):
            if first not in ours or second not in ours or first + second not in vocab or first + second in ours:
                raise ValueError(f"merge {rank} ({token_text(first)!r} {token_text(second)!r}) does not build a "
                                 "new token of the vocabulary from earlier ones")
            ours[first + second] = canonical[(ours[first], ours[second])] = 256 + rank
        self._tokens = sorted(ours, key=ours.get)  # the bytes of our id i
        self.file_ids = np.array([vocab[token] for token in self._tokens], dtype=np.int64)
        self._our_ids = {int(file_id): our_id for our_id, file_id in enumerate(self.file_ids)}
        self.special_tokens = dict(special_tokens)
        self.merges = canonical

    def _rebuild_vocab(self) -> None:
        """The base class's encoding tables (on our ids), then `vocab` keyed by the files' ids."""
        super()._rebuild_vocab()
        if hasattr(self, "file_ids"):
            self.vocab = dict(zip(self.file_ids.tolist(), self._tokens))
            self.vocab.update({index: text.encode("utf-8") for text, index in self.special_tokens.items()})

    def encode_ordinary(self, text: str) -> list[int]:
        return self.file_ids[super().encode_ordinary(text)].tolist() if text else []

    def save(self, file_prefix: str | Path) -> None:
        raise ValueError("a GPT-2 tokenizer keeps its files' ids: write it with save_gpt2_tokenizer(tokenizer, directory)")

    def our_ids(self, ids: Iterable[int] | np.ndarray | Tensor) -> list[int]:
        """The ids a BPETokenizer with the same merges gives (byte b is b, merge i is 256 + i, specials after)."""
        ids = ids.numpy() if isinstance(ids, Tensor) else ids
        specials = {index: 256 + len(self.merges) + k for k, index in enumerate(self.special_tokens.values())}
        return [self._our_ids[index] if index in self._our_ids else specials[index] for index in np.asarray(ids).tolist()]

    def canonical(self) -> BPETokenizer:
        """The same tokenizer with our ids (see our_ids): what a TinyGPT checkpoint stores."""
        tokenizer = BPETokenizer(self.pattern)
        tokenizer.merges = self.merges
        tokenizer.register_special_tokens({text: 256 + len(self.merges) + k for k, text in enumerate(self.special_tokens)})
        return tokenizer


# ---- reading -----------------------------------------------------------------------------------------
def load_gpt2_tokenizer(directory: str | Path) -> GPT2Tokenizer:
    """Read tokenizer.json if the directory has one, else vocab.json + merges.txt (GPT-2's pattern)."""
    directory = Path(directory)
    if (directory / TOKENIZER_JSON).is_file():
        return _from_tokenizer_json(directory / TOKENIZER_JSON)
    if not (directory / VOCAB_FILE).is_file() or not (directory / MERGES_FILE).is_file():
        raise ValueError(f"{directory}: no GPT-2 tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    vocab = _read_json(directory / VOCAB_FILE)
    lines = (directory / MERGES_FILE).read_text(encoding="utf-8").split("\n")
    merges = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    return _build(directory, RegexPatterns.GPT2, vocab, merges, special_texts=set())


def _from_tokenizer_json(path: Path) -> GPT2Tokenizer:
    record = _read_json(path)
    model = record.get("model") or {}
    if model.get("type") != "BPE" or record.get("normalizer") is not None:
        raise ValueError(f"{path}: not a byte-level BPE without normalizer (model {model.get('type')!r})")
    merges = [merge.split(" ") if isinstance(merge, str) else merge for merge in model.get("merges", [])]
    special_texts = {token["content"] for token in record.get("added_tokens", []) if token.get("special")}
    vocab = dict(model.get("vocab", {}))
    vocab.update({token["content"]: token["id"] for token in record.get("added_tokens", [])})
    return _build(path, _pattern_of(record.get("pre_tokenizer"), path), vocab, merges, special_texts)


def _pattern_of(pre_tokenizer: dict | None, path: Path) -> str:
    """Our pattern for the pre-tokenizers we can follow: ByteLevel (GPT-2's regex) or Split(regex) + ByteLevel."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    splits = [step for step in steps if step.get("type") == "Split"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space") or len(splits) + 1 != len(steps):
        raise ValueError(f"{path}: pre-tokenizer {pre_tokenizer} is not GPT-2's byte level (without prefix space)")
    if not splits:
        if not byte_level[0].get("use_regex", True):
            raise ValueError(f"{path}: a byte-level pre-tokenizer without a regex splits nothing")
        return RegexPatterns.GPT2
    split = splits[0]
    if len(splits) > 1 or byte_level[0].get("use_regex", True) or split.get("behavior") != "Isolated" or split.get("invert"):
        raise ValueError(f"{path}: pre-tokenizer {pre_tokenizer} is not one isolating regex then bytes")
    return split["pattern"]["Regex"]


def _build(source: Path, pattern: str, vocab: dict, merges: list, special_texts: set[str]) -> GPT2Tokenizer:
    try:
        merge_bytes = [(token_bytes(first), token_bytes(second)) for first, second in merges]
        reachable = {token_bytes(text) for pair in merges for text in pair} | {token_bytes(a + b) for a, b in merges}
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    byte_vocab, specials = {}, {}
    for text, index in vocab.items():
        is_special = text in special_texts or not all(character in _characters() for character in text)
        if not is_special:
            token = token_bytes(text)
            is_special = len(token) > 1 and token not in reachable
        if is_special:
            specials[text] = int(index)
        else:
            byte_vocab[token_bytes(text)] = int(index)
    try:
        return GPT2Tokenizer(pattern, merge_bytes, byte_vocab, specials)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


@functools.lru_cache(maxsize=1)
def _characters() -> frozenset[str]:
    return frozenset(bytes_to_unicode().values())


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None


# ---- writing -----------------------------------------------------------------------------------------
def save_gpt2_tokenizer(tokenizer: BPETokenizer, directory: str | Path) -> list[Path]:
    """Write tokenizer.json (any pattern) and, for GPT-2's pattern, vocab.json + merges.txt; the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ours = tokenizer.canonical() if isinstance(tokenizer, GPT2Tokenizer) else tokenizer
    learnt = 256 + len(ours.merges)
    file_ids = tokenizer.file_ids.tolist() if isinstance(tokenizer, GPT2Tokenizer) else list(range(learnt))
    byte_vocab = {token_text(ours.vocab[our_id]): file_ids[our_id] for our_id in range(learnt)}
    merges = [f"{token_text(ours.vocab[first])} {token_text(ours.vocab[second])}"
              for (first, second), _ in sorted(ours.merges.items(), key=lambda item: item[1])]
    vocab = {**byte_vocab, **tokenizer.special_tokens}  # Hugging Face lists special tokens in the vocabulary too
    written = [directory / TOKENIZER_JSON]
    record = _tokenizer_json(tokenizer.pattern, vocab, merges, tokenizer.special_tokens)
    _write_text(written[0], json.dumps(record, ensure_ascii=False))
    if tokenizer.pattern == RegexPatterns.GPT2:
        _write_text(directory / VOCAB_FILE, json.dumps(vocab, ensure_ascii=False))
        _write_text(directory / MERGES_FILE, "#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges))
        written += [directory / VOCAB_FILE, directory / MERGES_FILE]
    written.append(directory / TOKENIZER_CONFIG)
    _write_text(written[-1], json.dumps(_tokenizer_config(tokenizer.special_tokens)))
    return written


def _tokenizer_config(special_tokens: dict[str, int]) -> dict:
    """tokenizer_config.json: the end-of-text token when the tokenizer has one, else none. Without this file
    transformers' GPT-2 tokenizer adds <|endoftext|> itself, at an id beyond the model's vocabulary."""
    end_of_text = END_OF_TEXT if END_OF_TEXT in special_tokens else None
    return {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": end_of_text,
            "eos_token": end_of_text, "unk_token": end_of_text, "pad_token": None}


def _tokenizer_json(pattern: str, vocab: dict[str, int], merges: list[str], special_tokens: dict[str, int]) -> dict:
    """Hugging Face tokenizers' serialised form of a byte-level BPE with our pre-split pattern."""
    if pattern == RegexPatterns.GPT2:
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    else:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    added = [{"id": index, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for text, index in special_tokens.items()]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre_tokenizer, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8", newline="\n"))
