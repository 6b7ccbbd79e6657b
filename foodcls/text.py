"""Product names as bags of hashed character n-grams (fastText's subwords; scikit-learn's HashingVectorizer):
no vocabulary to store, a name never seen still lands in learnt buckets, and one function gives every path
(training, numpy predict, export predict, serve, explain; the ONNX graph takes its output) the same ids.

A name is folded first — NFKD, combining marks dropped (é → e), casefold (ß → ss), every character that is
not a letter or a digit a word break (punctuation, control characters), at most MAX_NAME_CHARS — then each
word, wrapped in boundary marks (`<fraise>`), gives its n-grams of ngram_min…ngram_max characters, hashed by
64-bit FNV-1a over the code points and the length (a stable hash, never Python's salted hash()), modulo the
buckets. With `words`, each whole word (marks included) is hashed too, as one id of its own (fastText's word
beside its subwords: a word is more than its n-grams, and a short one like "jus" has no n-gram of its own
length); a word's hash mixes in a tag no n-gram length has, so "<de>" the word and "<de>" the 4-gram differ.
A name's ids are its words (with `words`), then its n-grams (bigrams first, then longer ones), the first
max_ngrams of them, padded with the id `buckets`: an empty or missing name is an empty bag, whose vector is
zeros. Numpy only."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from foodcls.features import NAME  # noqa: F401 - the feature, and the column of the labelled CSVs (data build writes it)

MAX_NAME_CHARS = 200  # a longer name is cut here (a 100,000-character name costs no more than a long one)
WORD_START, WORD_END = "\x02", "\x03"  # boundary marks; no folded name holds them (control characters break words)
FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
BAG_BLOCK = 1024  # rows whose sums bag_means keeps in cache (1,024 x 48 floats: 192 KB)
WORD_TAG = np.uint64(0x100)  # mixed into a whole word's hash as an n-gram's length n (≤ 8) is into an n-gram's


@dataclass(frozen=True)
class NameHashing:
    """How names become ids (model.name in a config; stored in the checkpoint)."""

    buckets: int = 1 << 15
    ngram_min: int = 2
    ngram_max: int = 4
    max_ngrams: int = 96
    dim: int = 16  # the learnt vector of a bucket
    words: bool = False  # each whole word an id too (before the n-grams); False in checkpoints older than it

    def to_json(self) -> dict[str, int | bool]:
        """As checkpoints, ONNX metadata and serve give it: `words` only when set, so that a model without whole
        words reads as before the key existed (and a resume from an older checkpoint compares equal)."""
        return {k: v for k, v in asdict(self).items() if k != "words" or v}

    @property
    def pad(self) -> int:
        """The id of an empty slot (no n-gram): one past the last bucket."""
        return self.buckets


_BREAKS = re.compile(r"[\W_]+")  # what is not a letter or a digit (str.isalnum's letters and digits: \w less _)
_COMBINING: dict[int, None] = {}  # combining marks → deleted (str.translate), filled on first use


def fold(name: object) -> str:
    """The name as it is hashed: accents folded, casefolded, words separated by single spaces."""
    if not isinstance(name, str) or not name:
        return ""
    text = name[: MAX_NAME_CHARS * 2]
    if not text.isascii():  # (most names are: nothing to normalise)
        if not _COMBINING:
            _COMBINING.update((c, None) for c in range(0x110000) if unicodedata.combining(chr(c)))
        text = unicodedata.normalize("NFKD", text).translate(_COMBINING)
    return _BREAKS.sub(" ", text.casefold()).strip()[:MAX_NAME_CHARS].rstrip()


# ASCII names (most are) take a quicker road to the same words: what is not a letter or a digit becomes a space
# (str.translate), split on the spaces; no regex, no NFKD. Both roads are compared on random strings (tests).
_ASCII_BREAKS = str.maketrans({c: " " for c in range(128) if not chr(c).isalnum()})
_WORD_JOIN = WORD_END + WORD_START


def _words(name: object) -> list[str]:
    """fold(name)'s words."""
    if not isinstance(name, str) or not name:
        return []
    text = name[: MAX_NAME_CHARS * 2]
    if not text.isascii():
        folded = fold(text)
        return folded.split(" ") if folded else []
    words = text.lower().translate(_ASCII_BREAKS).split()
    if sum(map(len, words)) + len(words) - 1 > MAX_NAME_CHARS:  # longer than fold keeps: cut as it cuts
        words = " ".join(words)[:MAX_NAME_CHARS].split()
    return words


def _marked(name: object) -> str:
    """The folded name's words each wrapped in the boundary marks, run together: <sirop><de><fraise>."""
    words = _words(name)
    return f"{WORD_START}{_WORD_JOIN.join(words)}{WORD_END}" if words else ""


# A batch's short ASCII names (most names) are marked in one pass over them all, joined by a separator that a
# name holding it sends back to the one-by-one road: str's own loops instead of ~3 µs of Python per name.
_SEPARATOR = "\x00"
_QUICK_BREAKS = {c: v for c, v in _ASCII_BREAKS.items() if c != ord(_SEPARATOR)}  # _words' breaks; the separator stays


def _marked_all(names: Sequence[object]) -> list[str]:
    """[_marked(name) for name in names], the same strings."""
    quick = [i for i, name in enumerate(names) if isinstance(name, str) and len(name) <= MAX_NAME_CHARS and name.isascii()]
    text = _SEPARATOR.join([names[i] for i in quick])  # type: ignore[misc]
    if len(quick) < 2 or text.count(_SEPARATOR) != len(quick) - 1:  # (one name, or a name held the separator)
        return [_marked(name) for name in names]
    text = " ".join(filter(None, text.lower().translate(_QUICK_BREAKS).split(" ")))  # words apart by one space
    text = text.replace(f" {_SEPARATOR}", _SEPARATOR).replace(f"{_SEPARATOR} ", _SEPARATOR)
    text = text.replace(" ", _WORD_JOIN).replace(_SEPARATOR, f"{WORD_END}{_SEPARATOR}{WORD_START}")
    quick_marked = f"{WORD_START}{text}{WORD_END}".replace(WORD_START + WORD_END, "").split(_SEPARATOR)  # (no words: "")
    if len(quick) == len(names):
        return quick_marked
    quick_ones = dict(zip(quick, quick_marked))
    return [quick_ones[i] if i in quick_ones else _marked(name) for i, name in enumerate(names)]


def ngram_ids(names: Sequence[object], hashing: NameHashing) -> np.ndarray:
    """(len(names), max_ngrams) int32 ids of each name's n-grams, padded with hashing.pad."""
    out = np.full((len(names), hashing.max_ngrams), hashing.pad, dtype=np.int32)
    marked = _marked_all(names)
    lengths = np.fromiter((len(m) for m in marked), dtype=np.int64, count=len(marked))
    total = int(lengths.sum())
    if not total:
        return out
    points = np.frombuffer("".join(marked).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    owner = np.repeat(np.arange(len(names)), lengths)  # the name each code point belongs to
    word = np.cumsum(points == ord(WORD_START))  # the word each code point belongs to
    before = np.zeros(len(names), dtype=np.int64)  # each name's ids already placed (words, shorter n-grams) come first
    if hashing.words:
        before = _place_words(out, points, owner, len(names), hashing)
    for n in range(hashing.ngram_min, hashing.ngram_max + 1):
        if total < n:
            break
        span = total - n + 1
        h = np.full(span, FNV_OFFSET ^ np.uint64(n), dtype=np.uint64)  # the length mixed in: "ab" ≠ "<ab"
        for t in range(n):
            h = (h ^ points[t : t + span]) * FNV_PRIME  # uint64 arithmetic wraps: FNV-1a as specified
        starts = np.flatnonzero(word[:span] == word[n - 1 :])  # within one word (so within one name)
        owners = owner[starts]
        counts = np.bincount(owners, minlength=len(names))
        first = np.cumsum(counts) - counts  # where each name's n-grams of this length begin among `starts`
        slot = before[owners] + np.arange(len(starts)) - first[owners]
        keep = slot < hashing.max_ngrams
        out[owners[keep], slot[keep]] = (h[starts[keep]] % np.uint64(hashing.buckets)).astype(np.int32)
        before += counts
    return out


def _place_words(out: np.ndarray, points: np.ndarray, owner: np.ndarray, names: int, hashing: NameHashing) -> np.ndarray:
    """Write each whole word's id into the first slots of its name's row; return how many each name got."""
    starts = np.flatnonzero(points == ord(WORD_START))
    lengths = np.flatnonzero(points == ord(WORD_END)) - starts + 1  # the marks included
    owners = owner[starts]
    by_length = np.argsort(-lengths, kind="stable")  # the words still being hashed at step t are a prefix
    h = np.full(len(starts), FNV_OFFSET ^ WORD_TAG, dtype=np.uint64)
    ordered_starts, ordered_lengths = starts[by_length], lengths[by_length]
    active = len(starts)
    for t in range(int(ordered_lengths[0]) if len(starts) else 0):
        while ordered_lengths[active - 1] <= t:
            active -= 1
        h[:active] = (h[:active] ^ points[ordered_starts[:active] + t]) * FNV_PRIME
    ids = np.empty_like(h)
    ids[by_length] = h % np.uint64(hashing.buckets)
    counts = np.bincount(owners, minlength=names)
    slot = np.arange(len(starts)) - (np.cumsum(counts) - counts)[owners]
    keep = slot < hashing.max_ngrams
    out[owners[keep], slot[keep]] = ids[keep].astype(np.int32)
    return counts


def ngrams(name: object, hashing: NameHashing) -> list[tuple[str, int]]:
    """One name's n-grams as text (boundary marks shown as < and >) with their ids, in ngram_ids' order:
    what `--explain` names. A whole word (with `words`) is shown in brackets: [de], not the 4-gram <de>."""
    marked = _marked(name)
    grams = [f"[{word.lstrip(WORD_START)}]" for word in marked.split(WORD_END)[:-1]] if hashing.words else []
    for n in range(hashing.ngram_min, hashing.ngram_max + 1):
        for word in marked.split(WORD_END):
            word += WORD_END
            grams += [word[i : i + n] for i in range(len(word) - n + 1)] if word != WORD_END else []
    ids = ngram_ids([name], hashing)[0]
    shown = [g.replace(WORD_START, "<").replace(WORD_END, ">") for g in grams][: hashing.max_ngrams]
    return list(zip(shown, ids[: len(shown)].tolist()))


def bag_means(table: np.ndarray, ids: np.ndarray, pad: int) -> np.ndarray:
    """Each row's mean vector of its ids' rows of table (buckets, D); an empty bag gives zeros."""
    return padded_bag_means(np.concatenate([table, np.zeros((1, table.shape[1]), table.dtype)]), ids, pad)


def padded_bag_means(padded: np.ndarray, ids: np.ndarray, pad: int) -> np.ndarray:
    """bag_means over a table that already ends with the pad id's row of zeros (pad + 1 rows), so that a caller
    keeping one (a checkpoint's NameModel) copies no table per call. Summed a slot at a time over blocks of
    BAG_BLOCK rows (one (block, D) gather each, for the slots some bag of the block fills): no (rows, slots, D)
    array, and the block's sums stay in cache between slots — a third of the time of whole columns over 100,000
    rows. The sums are the same: each row's ids are added in slot order."""
    real = ids != pad
    out = np.zeros((len(ids), padded.shape[1]), dtype=np.float32)
    gathered = np.empty((min(BAG_BLOCK, len(ids)), padded.shape[1]), dtype=np.float32)
    for start in range(0, len(ids), BAG_BLOCK):
        block, sums = ids[start : start + BAG_BLOCK], out[start : start + BAG_BLOCK]
        rows = gathered[: len(block)]
        for slot in np.flatnonzero(real[start : start + BAG_BLOCK].any(axis=0)):
            np.take(padded, block[:, slot], axis=0, out=rows)
            sums += rows
    out /= np.maximum(real.sum(axis=1), 1)[:, None]
    return out
