"""Models as pairs of pure functions, built from Flax linen modules.

Every model in jaxtune is a :class:`Model`: two pure functions

* ``init(key) -> (params, model_state)``
* ``apply(params, model_state, x, *, train, key=None, mask=None) -> (outputs, new_model_state)``

where ``params`` and ``model_state`` (BatchNorm statistics, ``{}`` when there are none) are
plain pytrees of arrays. Because nothing is hidden in an object, a sweep can stack the params
of many trials along a leading axis and ``jax.vmap`` / ``jax.lax.scan`` / ``jax.jit`` the
training step directly.

The bundled builders (:func:`mlp`, :func:`cnn`) use Flax **linen** on purpose: linen's
``init`` / ``apply`` already *is* this pure functional form. Models written with Flax NNX are
still supported through :func:`from_nnx`; user linen modules are wrapped by :func:`from_linen`.
:func:`decoder_lm` builds a small decoder-only transformer language model
(:mod:`jaxtune.models.transformer`). Every builder takes a compute ``dtype`` (``"float32"`` or
``"bfloat16"``); parameters, normalization statistics and outputs stay float32 (see
:mod:`jaxtune.models.zoo`).

Padding invariance. Sweeps pad the last batch of an epoch to a fixed size so that shapes stay
static. ``apply`` accepts ``mask``, a boolean ``(batch,)`` vector marking the real examples:

* BatchNorm computes its batch statistics over the masked examples only, and
* dropout draws its mask per example, from ``fold_in(key, example_index)``,

so the first ``b`` rows of a padded batch get the same outputs (and the same updated
statistics) as an unpadded batch of those ``b`` rows. Layer and group normalization are
per-example and therefore padding-invariant already.

Modules: :mod:`~jaxtune.models.model` (the :class:`Model` pair), :mod:`~jaxtune.models.layers`
(activations, normalizations, per-example dropout), :mod:`~jaxtune.models.options` (the
builders' options and their specs), :mod:`~jaxtune.models.zoo` (MLP and CNN),
:mod:`~jaxtune.models.transformer` (the decoder-only language model) and
:mod:`~jaxtune.models.adapters` (linen and NNX modules as Models).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = mlp(num_outputs=10, input_shape=(64,), widths=(32,), normalization="batch")
    >>> params, state = model.init(jax.random.key(0))
    >>> logits, state = model.apply(params, state, jnp.zeros((8, 64)), train=True)
    >>> logits.shape
    (8, 10)
"""

from jaxtune.models import transformer as transformer
from jaxtune.models.adapters import from_linen as from_linen
from jaxtune.models.adapters import from_nnx as from_nnx
from jaxtune.models.layers import ACTIVATIONS as ACTIVATIONS
from jaxtune.models.layers import NORMALIZATIONS as NORMALIZATIONS
from jaxtune.models.layers import PerExampleDropout as PerExampleDropout
from jaxtune.models.layers import group_count as group_count
from jaxtune.models.layers import per_example_dropout as per_example_dropout
from jaxtune.models.model import Model as Model
from jaxtune.models.options import DTYPES as DTYPES
from jaxtune.models.options import HEADS as HEADS
from jaxtune.models.options import POOLINGS as POOLINGS
from jaxtune.models.transformer import DecoderLM as DecoderLM
from jaxtune.models.transformer import decoder_lm as decoder_lm
from jaxtune.models.zoo import CNN as CNN
from jaxtune.models.zoo import MLP as MLP
from jaxtune.models.zoo import cnn as cnn
from jaxtune.models.zoo import mlp as mlp

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "DTYPES",
    "DecoderLM",
    "HEADS",
    "MLP",
    "NORMALIZATIONS",
    "POOLINGS",
    "Model",
    "PerExampleDropout",
    "cnn",
    "decoder_lm",
    "from_linen",
    "from_nnx",
    "group_count",
    "mlp",
    "per_example_dropout",
    "transformer",
]
