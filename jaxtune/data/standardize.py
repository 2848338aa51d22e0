"""Per-feature standardization fitted on the training split only."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Standardizer"]


@jax.jit
def _standardize(x: Any, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``(x - mean) / std``, compiled once per shape (cheap eager calls on host data)."""
    return (jnp.asarray(x) - mean) / std


@jax.jit
def _unstandardize(x: Any, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``x * std + mean``, the inverse of :func:`_standardize`."""
    return jnp.asarray(x) * std + mean


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature affine standardization ``(x - mean) / std``, a JAX pytree.

    Statistics are taken over axis 0, so for images of shape (N, H, W, C) they are per pixel and
    channel. Features whose training standard deviation is below ``min_std`` (constant
    features, such as the always-blank border pixels of digits) get a scale of 1, as
    scikit-learn's ``StandardScaler`` does: they map to 0 on the training split and keep their
    raw offset elsewhere, instead of being blown up by a tiny divisor.

    Attributes:
        mean: Per-feature mean, float32, shape ``x.shape[1:]``.
        std: Per-feature standard deviation (1 for constant features), float32.

    Example:
        >>> s = Standardizer.fit(np.array([[0.0, 1.0], [2.0, 1.0]]))
        >>> np.asarray(s.transform(np.array([[2.0, 1.0]]))).tolist()
        [[1.0, 0.0]]
    """

    mean: jax.Array
    std: jax.Array

    @classmethod
    def fit(cls, x_train: Any, *, min_std: float = 1e-6) -> Standardizer:
        """Fits per-feature statistics on training inputs.

        Args:
            x_train: Array of shape (N, ...) with N >= 1.
            min_std: Features with a smaller standard deviation count as constant (scale 1);
                must be positive.

        Returns:
            A Standardizer whose statistics were computed in float64 and stored as float32.

        Example:
            >>> Standardizer.fit(np.ones((4, 3))).std.shape
            (3,)
        """
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std!r}")
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"x_train must have at least one example, got shape {x.shape}")
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise ValueError(
                f"x_train contains {bad} non-finite value(s) (NaN or inf): the statistics would "
                "be NaN; drop or impute them before fitting"
            )
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std < min_std, 1.0, std)
        return cls(
            mean=jnp.asarray(mean, dtype=jnp.float32), std=jnp.asarray(std, dtype=jnp.float32)
        )

    def transform(self, x: Any) -> jax.Array:
        """Standardizes ``x`` (jit-compatible).

        Args:
            x: Array of shape (..., *mean.shape).

        Returns:
            ``(x - mean) / std`` as a float32 (or wider, if ``x`` is wider) JAX array.
        """
        return _standardize(x, self.mean, self.std)

    def inverse_transform(self, x: Any) -> jax.Array:
        """Undoes :meth:`transform` (jit-compatible).

        Args:
            x: Standardized array of shape (..., *mean.shape).

        Returns:
            ``x * std + mean`` as a JAX array.
        """
        return _unstandardize(x, self.mean, self.std)
