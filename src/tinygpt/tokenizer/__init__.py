"""Byte-level BPE tokenizer: bpe.py is the algorithm as minbpe shows it; beside it the fast paths (fast.py),
the pre-split patterns (patterns.py), the files (formats.py, gpt2.py) and the checks of what is read (checks.py)."""
from tinygpt.tokenizer.bpe import get_stats, merge
from tinygpt.tokenizer.checks import MAX_TOKEN_ID, MAX_VOCAB_BYTES
from tinygpt.tokenizer.patterns import SPLIT_PATTERNS, RegexPatterns, can_cut_at_newlines
from tinygpt.tokenizer.tokenizer import BPETokenizer
from tinygpt.tokenizer.gpt2 import GPT2Tokenizer, load_gpt2_tokenizer, save_gpt2_tokenizer

__all__ = ["BPETokenizer", "RegexPatterns", "SPLIT_PATTERNS", "can_cut_at_newlines", "get_stats", "merge",
           "MAX_TOKEN_ID", "MAX_VOCAB_BYTES", "GPT2Tokenizer", "load_gpt2_tokenizer", "save_gpt2_tokenizer"]
