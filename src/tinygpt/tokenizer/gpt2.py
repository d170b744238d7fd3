"""GPT-2's tokenizer files (vocab.json + merges.txt, or Hugging Face's tokenizer.json) read into a
BPETokenizer, and any BPETokenizer written in that format.

Both formats spell each token's bytes with GPT-2's byte-to-character table (`bytes_to_unicode`), list
the merges in the order they apply, and give every token an id of their own: the bytes are not at
ids 0..255 and special tokens may come first. A GPT2Tokenizer therefore encodes exactly as a
BPETokenizer with the same merges (ours: byte b is id b, merge i is id 256 + i) and renames the ids
at the boundary, so that its ids are the files' ids.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from tinygpt.files import TOKENIZER_FILE_BYTES, read_json, read_text
from tinygpt.tensor import Tensor
from tinygpt.tokenizer.checks import check_token_id
from tinygpt.tokenizer.formats import write_text
from tinygpt.tokenizer.patterns import RegexPatterns
from tinygpt.tokenizer.tokenizer import BPETokenizer

VOCAB_FILE, MERGES_FILE, TOKENIZER_JSON = "vocab.json", "merges.txt", "tokenizer.json"
TOKENIZER_CONFIG, END_OF_TEXT = "tokenizer_config.json", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte gets a printable character (printable Latin-1 bytes keep their own, the others
    take chr(256), chr(257), ... in the order of their bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {byte: chr(byte) for byte in printable} | {byte: chr(256 + k) for k, byte in enumerate(others)}


CHARACTER_OF_BYTE = bytes_to_unicode()
BYTE_OF_CHARACTER = {character: byte for byte, character in CHARACTER_OF_BYTE.items()}


def token_text(token: bytes) -> str:
    """A token's bytes as GPT-2's files spell them."""
    return "".join(CHARACTER_OF_BYTE[byte] for byte in token)


def token_bytes(text: str) -> bytes | None:
    """Inverse of token_text, or None if `text` has a character outside GPT-2's table."""
    spelt = [BYTE_OF_CHARACTER.get(character) for character in text]
    return None if None in spelt else bytes(spelt)


class GPT2Tokenizer(BPETokenizer):
    """A BPETokenizer whose ids are those of a GPT-2 vocabulary: `file_ids[our_id]` is the file's id. Its merges
    (pairs of tokens, in the order they apply) and `vocab` (`{token: id}`, every byte and merged token included)
    are those load_gpt2_tokenizer has checked."""

    def __init__(self, pattern: str, merges: list[tuple[bytes, bytes]], vocab: dict[bytes, int],
                 special_tokens: dict[str, int]) -> None:
        super().__init__(pattern)
        self._tokens = [bytes([byte]) for byte in range(256)] + [first + second for first, second in merges]
        ours = {token: our_id for our_id, token in enumerate(self._tokens)}  # the bytes of our id i are _tokens[i]
        self.file_ids = np.array([vocab[token] for token in self._tokens], dtype=np.int64)
        self._our_ids = {int(file_id): our_id for our_id, file_id in enumerate(self.file_ids)}
        self.special_tokens = dict(special_tokens)
        self.merges = {(ours[first], ours[second]): 256 + rank for rank, (first, second) in enumerate(merges)}

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
# Every file is read through tinygpt.files (a regular file of at most TOKENIZER_FILE_BYTES), its JSON types are
# checked before they are used, and each merge is checked as it is read; any defect is a ValueError naming the file.
JSON_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a JSON string"}


def has_gpt2_tokenizer(directory: str | Path) -> bool:
    """Whether the directory has tokenizer.json or vocab.json (anything by that name: reading it says what is wrong)."""
    return any(_present(Path(directory) / name) for name in (TOKENIZER_JSON, VOCAB_FILE))


def load_gpt2_tokenizer(directory: str | Path) -> GPT2Tokenizer:
    """Read tokenizer.json if the directory has one, else vocab.json + merges.txt (GPT-2's pattern)."""
    directory = Path(directory)
    if _present(directory / TOKENIZER_JSON):
        return _from_tokenizer_json(directory / TOKENIZER_JSON)
    if not _present(directory / VOCAB_FILE) or not _present(directory / MERGES_FILE):
        raise ValueError(f"{directory}: no GPT-2 tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    vocab = _checked_vocab(_read_json(directory / VOCAB_FILE), directory / VOCAB_FILE)
    merges_path = directory / MERGES_FILE
    lines = io.StringIO(read_text(merges_path, "tokenizer file", TOKENIZER_FILE_BYTES), newline="\n")
    entries = ((f"{merges_path} line {number}", line.removesuffix("\n")) for number, line in enumerate(lines, start=1)
               if line.strip("\n") and not (number == 1 and line.startswith("#version")))
    return _build(directory / VOCAB_FILE, RegexPatterns.GPT2, vocab, _read_merges(entries, vocab), special_texts=set())


def _from_tokenizer_json(path: Path) -> GPT2Tokenizer:
    record = _field({"the file": _read_json(path)}, "the file", dict, None, path)
    model = _field(record, "model", dict, None, path)
    if model.get("type") != "BPE" or record.get("normalizer") is not None:
        raise ValueError(f"{path}: not a byte-level BPE without normalizer (model {model.get('type')!r:.40})")
    vocab = _checked_vocab(_field(model, "vocab", dict, {}, path), path)
    added = _added_tokens(_field(record, "added_tokens", list, [], path), path)
    vocab.update({text: index for text, (index, _) in added.items()})
    entries = ((f"{path} merge {rank}", merge) for rank, merge in enumerate(_field(model, "merges", list, [], path)))
    merges = _read_merges(entries, vocab)
    special_texts = {text for text, (_, special) in added.items() if special}
    return _build(path, _pattern_of(record.get("pre_tokenizer"), path), vocab, merges, special_texts)


def _added_tokens(tokens: list, path: Path) -> dict[str, tuple[int, bool]]:
    """`{content: (id, special)}` of tokenizer.json's added tokens, each checked."""
    added = {}
    for token in tokens:
        token = _field({"added token": token}, "added token", dict, None, path)
        content = _field(token, "content", str, None, path)
        if not content:
            raise ValueError(f"{path}: an added token has an empty content")
        added[content] = (check_token_id(token.get("id"), f"{path}: the id of added token {content!r:.40}"),
                          bool(token.get("special")))
    return added


def _pattern_of(pre_tokenizer: object, path: Path) -> str:
    """Our pattern for the pre-tokenizers we can follow: ByteLevel (GPT-2's regex) or Split(regex) + ByteLevel."""
    if pre_tokenizer is None:
        steps = []
    else:
        pre_tokenizer = _field({"pre_tokenizer": pre_tokenizer}, "pre_tokenizer", dict, None, path)
        steps = _field(pre_tokenizer, "pretokenizers", list, [pre_tokenizer], path)
    steps = [_field({"pre-tokenizer step": step}, "pre-tokenizer step", dict, None, path) for step in steps]
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    splits = [step for step in steps if step.get("type") == "Split"]
    described = json.dumps(pre_tokenizer)[:200]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space") or len(splits) + 1 != len(steps):
        raise ValueError(f"{path}: pre-tokenizer {described} is not GPT-2's byte level (without prefix space)")
    if not splits:
        if not byte_level[0].get("use_regex", True):
            raise ValueError(f"{path}: a byte-level pre-tokenizer without a regex splits nothing")
        return RegexPatterns.GPT2
    split = splits[0]
    if len(splits) > 1 or byte_level[0].get("use_regex", True) or split.get("behavior") != "Isolated" or split.get("invert"):
        raise ValueError(f"{path}: pre-tokenizer {described} is not one isolating regex then bytes")
    return _field(_field(split, "pattern", dict, None, path), "Regex", str, None, path)


def _checked_vocab(vocab: object, path: Path) -> dict[str, int]:
    """A vocabulary (`{token: id}`) whose ids are integers in range (_build checks that they are distinct)."""
    vocab = _field({"the vocabulary": vocab}, "the vocabulary", dict, None, path)
    for text, index in vocab.items():
        check_token_id(index, f"{path}: the id of token {text!r:.40}")
    return dict(vocab)


def _read_merges(entries: Iterable[tuple[str, object]], vocab: dict[str, int]) -> list[tuple[bytes, bytes]]:
    """The merges of `(where, entry)` pairs ('first second', or [first, second]), each checked as it is read: two
    GPT-2 tokens that earlier merges built, joined into a new token of the vocabulary (so there are fewer merges
    than tokens, whose ids are bounded)."""
    vocab_tokens = set(map(token_bytes, vocab)) - {None}
    built = {bytes([byte]) for byte in range(256)}
    merges = []
    for where, entry in entries:
        parts = entry.split(" ") if isinstance(entry, str) else entry
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(part, str) and part for part in parts)):
            raise ValueError(f"{where}: {str(entry)[:60]!r} is not a merge of two tokens ('first second')")
        first, second = token_bytes(parts[0]), token_bytes(parts[1])
        if first is None or second is None:
            raise ValueError(f"{where}: {entry!r:.60} has a character that is not a GPT-2 byte")
        if first not in built or second not in built or first + second not in vocab_tokens or first + second in built:
            raise ValueError(f"{where}: the merge {entry!r:.60} does not build a new token of the vocabulary from "
                             "earlier ones")
        built.add(first + second)
        merges.append((first, second))
    return merges


def _build(source: Path, pattern: str, vocab: dict[str, int], merges: list[tuple[bytes, bytes]],
           special_texts: set[str]) -> GPT2Tokenizer:
    """The tokenizer of checked merges and vocabulary, whose ids must be distinct and which must hold every byte and
    every merged token; a token that no merge builds (nor a byte) is a special one."""
    built = {bytes([byte]) for byte in range(256)} | {first + second for first, second in merges}
    byte_vocab, specials, seen = {}, {}, {}
    for text, index in vocab.items():
        if seen.setdefault(index, text) != text:
            raise ValueError(f"{source}: the tokens {seen[index]!r:.40} and {text!r:.40} both have the id {index}")
        token = None if text in special_texts else token_bytes(text)
        if token in built:
            byte_vocab[token] = index
        else:
            specials[text] = index
    missing = [token_text(token) for token in sorted(built - byte_vocab.keys())]
    if missing:
        raise ValueError(f"{source}: the vocabulary lacks the tokens {missing[:5]!r:.200} (bytes, or built by merges)")
    return GPT2Tokenizer(pattern, merges, byte_vocab, specials)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _field(record: dict, key: str, kind: type, default: object, path: Path):
    """record[key] (or `default` when absent, if not None) if it is of `kind`, else ValueError naming the file."""
    value = record.get(key, default)
    if not isinstance(value, kind):
        got = "nothing" if value is None and key not in record else f"{type(value).__name__} {str(value)[:40]!r}"
        raise ValueError(f"{path}: {key} must be {JSON_KINDS[kind]}, got {got}")
    return value


def _read_json(path: Path):
    try:
        return read_json(path, "tokenizer file", TOKENIZER_FILE_BYTES)
    except json.JSONDecodeError as error:
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
              for first, second in sorted(ours.merges, key=ours.merges.get)]
    vocab = {**byte_vocab, **tokenizer.special_tokens}  # Hugging Face lists special tokens in the vocabulary too
    written = [directory / TOKENIZER_JSON]
    record = _tokenizer_json(tokenizer.pattern, vocab, merges, tokenizer.special_tokens)
    write_text(written[0], json.dumps(record, ensure_ascii=False))
    if tokenizer.pattern == RegexPatterns.GPT2:
        write_text(directory / VOCAB_FILE, json.dumps(vocab, ensure_ascii=False))
        write_text(directory / MERGES_FILE, "#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges))
        written += [directory / VOCAB_FILE, directory / MERGES_FILE]
    written.append(directory / TOKENIZER_CONFIG)
    write_text(written[-1], json.dumps(_tokenizer_config(tokenizer.special_tokens)))
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

