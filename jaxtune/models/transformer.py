"""A small decoder-only transformer language model (Flax linen), as a :class:`Model`.

Token embeddings plus learned position embeddings, ``depth`` pre-LayerNorm blocks (causal
multi-head self-attention, then a GELU MLP of ``mlp_ratio * width``, each with a residual
connection), a final LayerNorm and an untied linear read-out to ``vocab_size`` logits. Every
kernel and embedding starts as N(0, 0.02^2) and every bias at zero (GPT-2's initialization),
so the untrained model's next-token distribution is close to uniform: its cross-entropy is
close to ``log(vocab_size)``.

Mixed precision, as in the MLP and CNN (:mod:`jaxtune.models.zoo`): ``dtype="bfloat16"`` runs
the embeddings, the residual stream, the attention projections and scores and the MLPs in
bfloat16 (flax ``dtype``) while the parameters stay float32 (``param_dtype``); LayerNorm
statistics are reduced in float32, the attention softmax runs in float32 (and so does the
product of its weights with the values), and the head (the final LayerNorm and the read-out)
computes in float32, so the logits, the loss and the gradients are float32.

Example (abstractly, with shapes only):
    >>> import jax, jax.numpy as jnp
    >>> model = decoder_lm(seq_len=16, width=32, depth=1, num_heads=2, dtype="bfloat16")
    >>> params, state = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params)), params["Block_0"]["Dense_0"]["kernel"].dtype
    (29920, dtype('float32'))
    >>> tokens = jax.ShapeDtypeStruct((3, 16), jnp.int32)
    >>> apply = lambda p, t: model.apply(p, state, t, train=False)
    >>> logits, _ = jax.eval_shape(apply, params, tokens)
    >>> logits.shape, logits.dtype
    ((3, 16, 256), dtype('float32'))
"""

from __future__ import annotations

from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.models.model import NUM_OUTPUTS, Model
from jaxtune.models.options import OPTIONS
from jaxtune.spec import KeySpec, check_arg

__all__ = ["Block", "DecoderLM", "decoder_lm"]

_INIT = nn.initializers.normal(0.02)
_SIZE = KeySpec("int", low=1)


class Block(nn.Module):
    """``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    Attributes:
      num_heads: attention heads (they divide the width).
      mlp_ratio: hidden width of the MLP, as a multiple of the width.
      dtype: compute dtype (a name or a jnp dtype); parameters are float32, LayerNorm
        statistics and the attention softmax float32.
    """

    num_heads: int
    mlp_ratio: int = 4
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x``: ``[B, T, width]``; ``mask``: ``[B, 1, T, T]`` (True where attention may look)."""
        width, dtype = x.shape[-1], jnp.dtype(self.dtype)
        dense = dict(kernel_init=_INIT, dtype=dtype, param_dtype=jnp.float32)
        h = nn.LayerNorm(dtype=dtype)(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            deterministic=True,
            force_fp32_for_softmax=True,
            **dense,
        )(h, h, mask=mask)
        x = x + h
        h = nn.Dense(self.mlp_ratio * width, **dense)(nn.LayerNorm(dtype=dtype)(x))
        return x + nn.Dense(width, **dense)(nn.gelu(h))


class DecoderLM(nn.Module):
    """Causal language model: ``[B, T]`` integer tokens -> ``[B, T, vocab_size]`` logits.

    The logits at position ``t`` depend on the tokens at positions ``<= t`` only; they are
    float32 whatever the compute dtype.

    Attributes:
      seq_len: the longest sequence (rows of the position embedding).
      width: model width (embedding size).
      depth: number of blocks.
      num_heads: attention heads per block.
      vocab_size: number of tokens.
      mlp_ratio: see :class:`Block`.
      dtype: compute dtype of the embeddings and blocks; the head computes in float32.
    """

    seq_len: int
    width: int
    depth: int
    num_heads: int
    vocab_size: int = 256
    mlp_ratio: int = 4
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits at every position."""
        if tokens.shape[-1] > self.seq_len:
            raise ValueError(
                f"tokens of length {tokens.shape[-1]} are invalid: expected at most seq_len = "
                f"{self.seq_len} positions"
            )
        dtype = jnp.dtype(self.dtype)
        embed = nn.Embed(self.vocab_size, self.width, embedding_init=_INIT, dtype=dtype)
        position = self.param("position", _INIT, (self.seq_len, self.width), jnp.float32)
        x = embed(tokens) + position[: tokens.shape[-1]].astype(dtype)
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, dtype)(x, mask)
        x = nn.LayerNorm(dtype=jnp.float32)(x)
        return nn.Dense(self.vocab_size, kernel_init=_INIT, dtype=jnp.float32)(x)


def _divisor_of(width: int) -> KeySpec:
    """The spec of a positive integer that divides ``width``."""

    def parse(value: Any) -> int:
        n = _SIZE.parse(value)
        if width % n:
            raise ValueError("")
        return n

    return KeySpec("custom", text=f"a positive divisor of width = {width}", parser=parse)


def decoder_lm(
    *,
    seq_len: int,
    width: int,
    depth: int,
    num_heads: int,
    vocab_size: int = 256,
    mlp_ratio: int = 4,
    dtype: Any = "float32",
) -> Model:
    """A :class:`DecoderLM` as a :class:`Model` (no model state, no dropout).

    ``init`` traces the module on int32 tokens ``[1, seq_len]``; ``apply`` ignores ``train``,
    ``key`` and ``mask`` (every operation is per example).

    Args:
      seq_len: tokens per example.
      width: model width; a multiple of ``num_heads``.
      depth: number of blocks.
      num_heads: attention heads per block.
      vocab_size: number of tokens.
      mlp_ratio: hidden width of each block's MLP, as a multiple of ``width``.
      dtype: compute dtype, one of :data:`jaxtune.models.DTYPES` (``"float32"``,
        ``"bfloat16"``) or the jnp dtype; parameters and logits stay float32.

    Returns:
      The model.

    Raises:
      ValueError: naming the first bad argument and its allowed values (a positive integer;
        heads that divide the width; a dtype name).

    Example:
      >>> decoder_lm(seq_len=8, width=30, depth=1, num_heads=4)
      Traceback (most recent call last):
      ...
      ValueError: num_heads = 4 is invalid: num_heads must be a positive divisor of width = 30
    """
    sizes = {"seq_len": seq_len, "width": width, "depth": depth, "mlp_ratio": mlp_ratio}
    sizes = {name: check_arg(name, value, _SIZE) for name, value in sizes.items()}
    module = DecoderLM(
        **sizes,
        num_heads=check_arg("num_heads", num_heads, _divisor_of(sizes["width"])),
        vocab_size=check_arg("vocab_size", vocab_size, NUM_OUTPUTS),
        dtype=check_arg("dtype", dtype, OPTIONS["dtype"]),
    )
    length = sizes["seq_len"]

    def init(key: jax.Array) -> tuple[Any, dict]:
        variables = module.init(key, jnp.zeros((1, length), jnp.int32))
        return flax.core.unfreeze(variables)["params"], {}

    def apply(params, model_state, tokens, *, train, key=None, mask=None):
        return module.apply({"params": params}, tokens), model_state

    return Model(init=init, apply=apply, input_shape=(length,), num_outputs=module.vocab_size)
