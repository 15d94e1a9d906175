"""CLIP's text tokenizer, offline: the ids of OpenAI's `clip.tokenize(texts, truncate=True)` exactly.

Text is cleaned (ftfy `fix_text`, HTML entities unescaped twice, runs of whitespace collapsed, stripped), lower-cased,
split with OpenAI's regular expression, each piece's UTF-8 bytes mapped to printable characters and merged by
byte-level BPE using the ranks in `bpe_simple_vocab_16e6.txt.gz` (OpenAI's vocabulary, MIT licence, shipped as package
data). Each prompt becomes [<|startoftext|> 49406, ..., <|endoftext|> 49407] zero padded to the context length (77).

    ids = tokenize(["a face with blue eyes", "Bald"])   # (2, 77) int32
"""
from __future__ import annotations

import functools
import gzip
import html
import os
import warnings
from typing import Dict, List, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex

from ffclip_jax.errors import InputError

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab 49408 = 2 * 256 byte symbols + merges + 2 special tokens
# OpenAI's pre-tokenisation pattern (special tokens, English contractions, letter runs, single digits, other symbols)
PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


_PRINTABLE_BYTES = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
# byte values in vocabulary order: printable Latin-1 bytes first, then the others in byte order
_BYTE_ORDER = _PRINTABLE_BYTES + [b for b in range(256) if b not in _PRINTABLE_BYTES]


@functools.lru_cache(maxsize=None)
def byte_symbols() -> Tuple[str, ...]:
    """The printable character standing for each byte 0..255 (GPT-2 / CLIP byte-level BPE): printable Latin-1 bytes
    stand for themselves, the others are shifted to chr(256), chr(257), ... in byte order."""
    out = [""] * 256
    for i, b in enumerate(_BYTE_ORDER):
        out[b] = chr(b) if i < len(_PRINTABLE_BYTES) else chr(256 + i - len(_PRINTABLE_BYTES))
    return tuple(out)


def clean(text: str) -> str:
    """ftfy fix_text, HTML unescape twice, whitespace collapsed and stripped, lower-cased (OpenAI's order)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE with OpenAI's CLIP vocabulary. `encode(text)` gives the BPE ids without start/end tokens;
    calling the tokenizer gives the padded (N, context_length) id array."""

    def __init__(self, vocab_file: str = VOCAB_FILE):
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        symbols = [byte_symbols()[b] for b in _BYTE_ORDER]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT]
        self.ids: Dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.tokens: List[str] = vocab
        self.ranks: Dict[Tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.ids[START_OF_TEXT], self.ids[END_OF_TEXT]
        self._pattern = regex.compile(PATTERN, regex.IGNORECASE)
        self._byte_symbols = byte_symbols()
        self._cache: Dict[str, Tuple[str, ...]] = {START_OF_TEXT: (START_OF_TEXT,), END_OF_TEXT: (END_OF_TEXT,)}

    def bpe(self, piece: str) -> Tuple[str, ...]:
        """Merge the symbols of one pre-token (last symbol marked '</w>') by lowest merge rank until none applies."""
        if piece in self._cache:
            return self._cache[piece]
        word = tuple(piece[:-1]) + (piece[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text (no start/end tokens)."""
        out: List[int] = []
        for piece in self._pattern.findall(clean(text)):
            piece = "".join(self._byte_symbols[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[tok] for tok in self.bpe(piece))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids (special tokens appear as their strings; strip the zero padding first)."""
        inverse = {s: b for b, s in enumerate(self._byte_symbols)}
        text = "".join(self.tokens[int(i)] for i in ids)
        return bytearray(inverse[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """(N, context_length) int32 ids: start token, BPE ids, end token, zeros. A prompt longer than the context is
        truncated as `clip.tokenize(..., truncate=True)` (first context_length - 1 tokens, then the end token) with a
        warning; an empty or blank prompt raises InputError."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise InputError("no prompts given: expected at least one non-empty text prompt")
        out = np.zeros((len(texts), context_length), np.int32)
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"prompt {n} is a {type(text).__name__}, expected a string")
            body = self.encode(text)
            if not body:
                raise InputError(f"prompt {n} ({text!r}) is empty after cleaning: expected some text")
            ids = [self.sot] + body + [self.eot]
            if len(ids) > context_length:
                warnings.warn(f"prompt {n} ({text[:40]!r}...) has {len(ids)} tokens, more than the context length "
                              f"{context_length}; truncated to the first {context_length - 1} and the end token",
                              stacklevel=2)
                ids = ids[:context_length - 1] + [self.eot]
            out[n, :len(ids)] = ids
        return out


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """OpenAI's `clip.tokenize(texts, context_length, truncate=True)` as an (N, context_length) int32 array."""
    return default_tokenizer()(texts, context_length)
