"""De-duplication state that stays small at the full export's size: 64-bit hashes of the keys seen, in
sorted numpy arrays (8 bytes a key, where a Python set of strings costs over 100).

The arrays form levels, each at least twice the size of the next, merged as they fill (a log-structured
merge): adding n keys costs O(n log n) in all, a lookup a binary search per level. Two different keys
share a 64-bit hash with a chance of about k² / 2^65 for k keys (1 in 500,000 at the full export's
eight million keys): such a product would be dropped as a duplicate.
"""

from __future__ import annotations

import numpy as np


class SeenKeys:
    """Hashes of the keys of the products kept so far."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []  # sorted, unique, uint64; sizes decreasing

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for level in self.levels:  # none is empty
            at = np.minimum(np.searchsorted(level, hashes), len(level) - 1)
            found |= level[at] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        level = np.unique(hashes.astype(np.uint64, copy=False))
        if not len(level):
            return
        while self.levels and len(self.levels[-1]) <= 2 * len(level):
            level = np.union1d(self.levels.pop(), level)
        self.levels.append(level)

    def first_seen(self, keys: np.ndarray, content_keys: np.ndarray, has_content: np.ndarray) -> np.ndarray:
        """Which of a batch's products (in order) are new: neither key was seen before, in earlier batches
        or earlier in this one; the keys of the new ones are added. A duplicate adds nothing, as before."""
        has_content = has_content & (content_keys != keys)  # a product without a barcode: its key is its content key
        new = ~(self.contains(keys) | (self.contains(content_keys) & has_content))
        candidates = np.flatnonzero(new)
        both = np.concatenate([keys[candidates], content_keys[candidates[has_content[candidates]]]])
        if len(np.unique(both)) != len(both):  # a key repeats within the batch: decide in file order
            local: set[int] = set()
            for i in candidates.tolist():
                key, content = int(keys[i]), int(content_keys[i]) if has_content[i] else None
                if key in local or content in local:
                    new[i] = False
                    continue
                local.add(key)
                if content is not None:
                    local.add(content)
            candidates = np.flatnonzero(new)
            both = np.concatenate([keys[candidates], content_keys[candidates[has_content[candidates]]]])
        self.add(both)
        return new
