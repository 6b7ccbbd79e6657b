"""Feature scaling and fill values, fitted on the training rows and stored in every checkpoint: what turns
label values into network inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fit_scale(features: np.ndarray) -> np.ndarray:
    """Per-feature divisor: the maximum over the training set (every minimum is 0); 1 where the max is 0
    or unknown."""
    # (fmax skips NaN without a copy of the features; a column with no known value comes out NaN, and scale 1.)
    maxima = np.fmax.reduce(features, axis=0) if len(features) else np.zeros(features.shape[1])
    maxima = maxima.astype(np.float32)
    return np.where(np.isfinite(maxima) & (maxima > 0), maxima, np.float32(1.0)).astype(np.float32)


def fit_fill(features: np.ndarray) -> np.ndarray:
    """Per-feature fill value for unknown cells: the training median (0 where every value is unknown)."""
    known = (column[~np.isnan(column)] for column in features.T)  # a column at a time (memory)
    return np.array([np.median(k) if len(k) else 0.0 for k in known], dtype=np.float32)


def fill_missing(features: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Unknown cells replaced by the stored fill values."""
    missing = np.isnan(features)
    return np.where(missing, fill, features).astype(np.float32) if missing.any() else features


@dataclass(frozen=True)
class Preprocessing:
    """What turns label values into network inputs: unknown cells filled (training medians), then each
    feature shifted and divided, x' = (x - shift) / scale: by default shift 0 and scale the training
    maximum; with data.scaling: standard, the training mean and standard deviation. Fitted on the
    training rows, or taken from the checkpoint being fine-tuned or resumed; stored in every checkpoint."""

    scale: np.ndarray
    fill: np.ndarray
    shift: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, scaling: str = "max") -> Preprocessing:
        fill = fit_fill(features)
        if scaling == "standard":
            filled = fill_missing(features, fill).astype(np.float64)
            std = filled.std(axis=0) if len(filled) else np.ones(features.shape[1])
            return cls(np.where(std > 0, std, 1.0).astype(np.float32), fill, filled.mean(axis=0).astype(np.float32))
        return cls(fit_scale(features), fill, np.zeros(features.shape[1], dtype=np.float32))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Preprocessing:
        """From a checkpoint's arrays (the caller checks their shapes against its features)."""
        scale = arrays["scale"].astype(np.float32)
        # Checkpoints from before fill values and shifts existed had four always-known features, max-scaled.
        fill = arrays["fill"].astype(np.float32) if "fill" in arrays else np.zeros_like(scale)
        shift = arrays["shift"].astype(np.float32) if "shift" in arrays else np.zeros_like(scale)
        return cls(scale, fill, shift)

    @classmethod
    def from_checkpoint(cls, checkpoint) -> Preprocessing:
        return cls.from_arrays(checkpoint.arrays)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scale": self.scale, "fill": self.fill, "shift": self.shift}

    def matches(self, arrays: dict[str, np.ndarray]) -> bool:
        """Whether a checkpoint's stored preprocessing (as far as it has one) is this."""
        return all(np.array_equal(arrays[name], value) for name, value in self.arrays().items() if name in arrays)

    def apply(self, features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(filled - shift) / scale in float32, into `out` (float32, the features' shape) if given: no
        temporary copies, the same numbers."""
        filled = fill_missing(np.asarray(features, dtype=np.float32), self.fill)
        out = np.subtract(filled, self.shift, out=out, dtype=np.float32)
        return np.divide(out, self.scale, out=out)
