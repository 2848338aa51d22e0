"""Named kernel initializers and parameter re-initialization.

The presets are thin, named handles on ``jax.nn.initializers``; nothing here
reimplements a distribution. Each preset is a variance-scaling rule

====================  ==========  ========  ===========================
name                  variance    fan       distribution
====================  ==========  ========  ===========================
``he_normal``         2 / n       fan_in    truncated normal (corrected)
``he_uniform``        2 / n       fan_in    uniform
``glorot_normal``     1 / n       fan_avg   truncated normal (corrected)
``glorot_uniform``    1 / n       fan_avg   uniform
``lecun_normal``      1 / n       fan_in    truncated normal (corrected)
``lecun_uniform``     1 / n       fan_in    uniform
``normal``            stddev**2   --        plain normal (fixed stddev)
====================  ==========  ========  ===========================

where ``fan_avg = (fan_in + fan_out) / 2``. Fans follow the JAX convention: the
last two kernel axes are ``(in, out)`` and all leading axes form the receptive
field, so a dense ``(in, out)`` kernel has ``fan_in = in`` and a conv
``(h, w, in, out)`` kernel has ``fan_in = h * w * in``.

``scale`` everywhere multiplies the *standard deviation* of the drawn kernel.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn.initializers import Initializer
from jax.typing import ArrayLike

__all__ = [
    "INITIALIZERS",
    "compute_fans",
    "expected_std",
    "get_initializer",
    "reinitialize",
    "scale_kernels",
]

INITIALIZERS: tuple[str, ...] = (
    "he_normal",
    "he_uniform",
    "glorot_normal",
    "glorot_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
)

# name -> (jax factory, variance numerator, fan mode)
_VARIANCE_SCALING: dict[str, tuple[Any, float, str]] = {
    "he_normal": (jax.nn.initializers.he_normal, 2.0, "fan_in"),
    "he_uniform": (jax.nn.initializers.he_uniform, 2.0, "fan_in"),
    "glorot_normal": (jax.nn.initializers.glorot_normal, 1.0, "fan_avg"),
    "glorot_uniform": (jax.nn.initializers.glorot_uniform, 1.0, "fan_avg"),
    "lecun_normal": (jax.nn.initializers.lecun_normal, 1.0, "fan_in"),
    "lecun_uniform": (jax.nn.initializers.lecun_uniform, 1.0, "fan_in"),
}

DEFAULT_NORMAL_STDDEV = 0.01

_SPELLED = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(\s*([^()]*?)\s*\)\s*$")


def _parse_name(name: str, stddev: float | None) -> tuple[str, float | None]:
    """Splits ``"normal(0.01)"`` into ``("normal", 0.01)`` and validates the pair.

    Args:
      name: A preset name, optionally spelled with an argument.
      stddev: The keyword stddev, if any.

    Returns:
      ``(base_name, stddev)`` where stddev is set only for ``"normal"``.
    """
    if not isinstance(name, str):
        raise ValueError(f"initializer name must be a string, got {name!r}")
    match = _SPELLED.match(name)
    base = match.group(1) if match else name.strip()
    if base not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; allowed: {', '.join(INITIALIZERS)}")
    spelled_arg = match.group(2) if match else ""
    if base != "normal":
        if spelled_arg or stddev is not None:
            raise ValueError(f"initializer {base!r} takes no stddev; only 'normal' does")
        return base, None
    if spelled_arg:
        try:
            parsed = float(spelled_arg)
        except ValueError:
            raise ValueError(f"cannot parse stddev in initializer {name!r}") from None
        if stddev is not None and not math.isclose(parsed, stddev):
            raise ValueError(f"conflicting stddev: {name!r} and stddev={stddev}")
        stddev = parsed
    if stddev is None:
        stddev = DEFAULT_NORMAL_STDDEV
    if not (math.isfinite(stddev) and stddev > 0):
        raise ValueError(f"stddev must be a positive finite number, got {stddev}")
    return base, float(stddev)


def _check_scale(scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return float(scale)


def _scaled(base: Initializer, scale: float) -> Initializer:
    """Wraps ``base`` so every draw is multiplied by ``scale``."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = None, **kwargs: Any) -> jax.Array:
        values = base(key, shape, dtype, **kwargs)
        return values * jnp.asarray(scale, values.dtype)

    return init


def get_initializer(
    name: str,
    *,
    scale: float = 1.0,
    stddev: float | None = None,
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
) -> Initializer:
    """Returns a named kernel initializer.

    Args:
      name: One of :data:`INITIALIZERS`. ``"normal"`` may be spelled with its
        stddev, e.g. ``"normal(0.01)"``.
      scale: Multiplier of the standard deviation of every draw (positive).
      stddev: Standard deviation for ``"normal"`` (default 0.01); an error for
        the variance-scaling presets.
      in_axis, out_axis: the kernel axes of the fan-in and fan-out of the variance-scaling
        presets, as ``jax.nn.initializers.variance_scaling`` takes them (the other axes form
        the receptive field).

    Returns:
      A ``jax.nn.initializers.Initializer``; with ``scale=1`` it is JAX's own
      initializer object (e.g. ``jax.nn.initializers.he_normal()``).

    Raises:
      ValueError: For an unknown name (the message lists the allowed names), a
        stddev given to a preset that takes none, or a non-positive scale.

    Example:
      >>> init = get_initializer("he_normal")
      >>> w = init(jax.random.key(0), (64, 32))
      >>> get_initializer("normal(0.01)") is not None
      True
    """
    base, stddev = _parse_name(name, stddev)
    scale = _check_scale(scale)
    if base == "normal":
        return jax.nn.initializers.normal(stddev * scale)
    initializer = _VARIANCE_SCALING[base][0](in_axis=in_axis, out_axis=out_axis)
    return initializer if scale == 1.0 else _scaled(initializer, scale)


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Fan-in and fan-out of a kernel shape, as ``jax.nn.initializers`` computes them.

    Args:
      shape: Kernel shape with at least two axes; the last two are ``(in, out)``
        and leading axes form the receptive field.

    Returns:
      ``(fan_in, fan_out)``.

    Example:
      >>> compute_fans((3, 3, 16, 32))
      (144, 288)
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"kernel shape needs at least 2 axes, got {shape}")
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def expected_std(
    name: str,
    shape: Sequence[int],
    *,
    stddev: float | None = None,
    scale: float = 1.0,
) -> float:
    """Closed-form standard deviation of a kernel drawn with a preset.

    Args:
      name: One of :data:`INITIALIZERS` (``"normal(0.01)"`` form accepted).
      shape: Kernel shape (dense ``(in, out)`` or conv ``(h, w, in, out)``).
      stddev: Standard deviation for ``"normal"``.
      scale: The same standard-deviation multiplier as :func:`get_initializer`.

    Returns:
      ``scale * sqrt(gain / fan)`` for the variance-scaling presets, or
      ``scale * stddev`` for ``"normal"``.

    Example:
      >>> round(expected_std("he_normal", (512, 256)), 6)
      0.0625
    """
    base, stddev = _parse_name(name, stddev)
    scale = _check_scale(scale)
    fan_in, fan_out = compute_fans(shape)
    if base == "normal":
        return scale * stddev
    _, gain, mode = _VARIANCE_SCALING[base]
    fan = fan_in if mode == "fan_in" else (fan_in + fan_out) / 2
    return scale * math.sqrt(gain / fan)


def _variable_path(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """``path`` without the trailing ``.value`` of an NNX ``Variable`` (the leaves of an
    ``nnx.State`` sit there), so that it names the parameter as a pure dict's path does."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        return path[:-1]
    return path


def _leaf_name(path: tuple[Any, ...]) -> str | None:
    """The name of the last entry of a pytree key path (dict key or attribute)."""
    path = _variable_path(path)
    if not path:
        return None
    last = path[-1]
    for attr in ("key", "name"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return None


def _path_index(path: tuple[Any, ...]) -> int:
    """A stable, non-negative 31-bit integer identifying a key path."""
    return zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF


def reinitialize(params: Any, scheme: str, key: jax.Array, *, scale: float = 1.0) -> Any:
    """Re-draws every kernel of a Flax params tree and zeroes every bias.

    Leaves named ``"kernel"`` with at least two axes (dense ``(in, out)``, conv
    ``(h, w, in, out)``) are re-drawn with ``scheme``, each with its own key
    ``fold_in(key, i)`` where ``i`` is a stable hash of the leaf's path (so adding
    a layer never changes the draws of the others). Leaves named ``"bias"`` are
    set to zero. Every other leaf (e.g. a normalization ``"scale"``) is returned
    unchanged. Dtypes are preserved.

    Fans follow the JAX convention (see the module docstring), except for the projections
    of a Flax attention module (``nn.MultiHeadDotProductAttention``, ``nnx.MultiHeadAttention``:
    a module whose children include ``query``, ``key`` and ``value``). Those kernels are
    ``DenseGeneral`` kernels, and their fans are those of the flattened dense kernel, as
    Flax draws them: ``query`` / ``key`` / ``value`` ``(in, heads, head_dim)`` have
    ``fan_in = in`` and ``out`` ``(heads, head_dim, features)`` has
    ``fan_in = heads * head_dim``.

    Args:
      params: A params pytree: nested dicts, as produced by ``module.init``, or an
        ``nnx.State`` (``nnx.state(model, nnx.Param)``).
      scheme: An initializer name accepted by :func:`get_initializer`.
      key: PRNG key.
      scale: Standard-deviation multiplier for the kernels.

    Returns:
      A new pytree of the same structure; the input is not modified.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
      >>> new = reinitialize(params, "lecun_normal", jax.random.key(0))
      >>> float(new["Dense_0"]["bias"].sum())
      0.0
    """
    get_initializer(scheme, scale=scale)  # validates the name and the scale
    attention = _attention_modules(params)

    def redraw(path: tuple[Any, ...], leaf: Any) -> Any:
        name = _leaf_name(path)
        if name == "kernel" and jnp.ndim(leaf) >= 2:
            axes = _attention_axes(path, jnp.ndim(leaf), attention)
            initializer = get_initializer(scheme, scale=scale, **axes)
            leaf_key = jax.random.fold_in(key, _path_index(_variable_path(path)))
            return initializer(leaf_key, jnp.shape(leaf), jnp.result_type(leaf))
        if name == "bias":
            return jnp.zeros_like(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(redraw, params)


_PROJECTIONS = ("query", "key", "value")


def _attention_modules(params: Any) -> set[str]:
    """The key paths (``keystr``) of the modules whose children include ``query``, ``key``
    and ``value`` kernels: Flax attention modules."""
    children: dict[str, set[str]] = {}
    for full, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = _variable_path(full)
        if len(path) >= 2 and _leaf_name(path) == "kernel":
            parent = _leaf_name(path[:-1])
            children.setdefault(jax.tree_util.keystr(path[:-2]), set()).add(str(parent))
    return {m for m, names in children.items() if set(_PROJECTIONS) <= names}


def _attention_axes(path: tuple[Any, ...], ndim: int, attention: set[str]) -> dict[str, Any]:
    """``in_axis`` / ``out_axis`` of a kernel of an attention projection (a ``DenseGeneral``
    kernel: fans of the flattened dense kernel), or ``{}`` for the JAX convention."""
    path = _variable_path(path)
    if ndim < 3 or len(path) < 2 or jax.tree_util.keystr(path[:-2]) not in attention:
        return {}
    parent = _leaf_name(path[:-1])
    if parent in _PROJECTIONS:
        return {"in_axis": 0, "out_axis": tuple(range(1, ndim))}
    if parent == "out":
        return {"in_axis": tuple(range(ndim - 1)), "out_axis": ndim - 1}
    return {}


def scale_kernels(params: Any, scale: ArrayLike) -> Any:
    """Multiplies every leaf named ``kernel`` of a params tree by ``scale`` (may be traced).

    This is how ``task.init_scale`` widens or narrows an initialization without changing its
    shape: every kernel's standard deviation is multiplied by ``scale``; biases and
    normalization parameters are left alone.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> out = scale_kernels(params, 0.5)
      >>> float(out["Dense_0"]["kernel"][0, 0]), float(out["Dense_0"]["bias"][0])
      (0.5, 1.0)
    """

    def scale_leaf(path: tuple[Any, ...], leaf: Any) -> Any:
        return leaf * scale if _leaf_name(path) == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(scale_leaf, params)
