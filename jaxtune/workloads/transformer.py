"""A small decoder-only transformer language model (Flax linen), as a :class:`jaxtune.Model`.

Token embeddings plus learned position embeddings, ``depth`` pre-LayerNorm blocks (causal
multi-head self-attention, then a GELU MLP of ``mlp_ratio * width``, each with a residual
connection), a final LayerNorm and an untied linear read-out to ``vocab_size`` logits. Every
kernel and embedding starts as N(0, 0.02^2) and every bias at zero (GPT-2's initialization),
so the untrained model's next-token distribution is close to uniform: its cross-entropy is
close to ``log(vocab_size)``.

Example (abstractly, with shapes only):
    >>> import jax, jax.numpy as jnp
    >>> model = decoder_lm(seq_len=16, width=32, depth=1, num_heads=2)
    >>> params, state = jax.eval_shape(model.init, jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    29920
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

from jaxtune.models import Model

__all__ = ["Block", "DecoderLM", "decoder_lm"]

_INIT = nn.initializers.normal(0.02)


class Block(nn.Module):
    """``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    Attributes:
      num_heads: attention heads (they divide the width).
      mlp_ratio: hidden width of the MLP, as a multiple of the width.
    """

    num_heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x``: ``[B, T, width]``; ``mask``: ``[B, 1, T, T]`` (True where attention may look)."""
        width = x.shape[-1]
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            kernel_init=_INIT,
            deterministic=True,
            force_fp32_for_softmax=True,
        )(h, h, mask=mask)
        x = x + h
        h = nn.Dense(self.mlp_ratio * width, kernel_init=_INIT)(nn.LayerNorm()(x))
        return x + nn.Dense(width, kernel_init=_INIT)(nn.gelu(h))


class DecoderLM(nn.Module):
    """Causal language model: ``[B, T]`` integer tokens -> ``[B, T, vocab_size]`` logits.

    The logits at position ``t`` depend on the tokens at positions ``<= t`` only.

    Attributes:
      seq_len: the longest sequence (rows of the position embedding).
      width: model width (embedding size).
      depth: number of blocks.
      num_heads: attention heads per block.
      vocab_size: number of tokens.
      mlp_ratio: see :class:`Block`.
    """

    seq_len: int
    width: int
    depth: int
    num_heads: int
    vocab_size: int = 256
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits at every position."""
        embed = nn.Embed(self.vocab_size, self.width, embedding_init=_INIT)
        position = self.param("position", _INIT, (self.seq_len, self.width))
        x = embed(tokens) + position[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio)(x, mask)
        return nn.Dense(self.vocab_size, kernel_init=_INIT)(nn.LayerNorm()(x))


def _check(name: str, value: Any) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"invalid {name} {value!r}; allowed values: a positive int")
    return value


def decoder_lm(
    *, seq_len: int, width: int, depth: int, num_heads: int, vocab_size: int = 256
) -> Model:
    """A :class:`DecoderLM` as a :class:`jaxtune.Model` (no model state, no dropout).

    ``init`` traces the module on int32 tokens ``[1, seq_len]``; ``apply`` ignores ``train``,
    ``key`` and ``mask`` (every operation is per example).

    Args:
      seq_len: tokens per example.
      width: model width; a multiple of ``num_heads``.
      depth: number of blocks.
      num_heads: attention heads per block.
      vocab_size: number of tokens.

    Raises:
      ValueError: a size that is not a positive int, or heads that do not divide the width.
    """
    for name, value in (("seq_len", seq_len), ("width", width), ("depth", depth)):
        _check(name, value)
    if _check("num_heads", num_heads) and width % num_heads:
        raise ValueError(
            f"invalid num_heads {num_heads!r}; allowed values: a divisor of width = {width}"
        )
    module = DecoderLM(seq_len, width, depth, num_heads, _check("vocab_size", vocab_size))

    def init(key: jax.Array) -> tuple[Any, dict]:
        variables = module.init(key, jnp.zeros((1, seq_len), jnp.int32))
        return flax.core.unfreeze(variables)["params"], {}

    def apply(params, model_state, tokens, *, train, key=None, mask=None):
        return module.apply({"params": params}, tokens), model_state

    return Model(init=init, apply=apply, input_shape=(seq_len,), num_outputs=vocab_size)
