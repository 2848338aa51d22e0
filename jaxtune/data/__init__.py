"""Data for jaxtune: splits, standardization, bundled datasets and deterministic batching.

Everything is local: the digits and diabetes data ship with scikit-learn and the synthetic
data comes from a seeded NumPy generator, so nothing is downloaded at run time. Inputs are
standardized with statistics of the training split only (:class:`Standardizer`).

Example:
    >>> import jax
    >>> splits = load_digits()
    >>> x, y = splits.train
    >>> idx = batch_indices(jax.random.key(0), 0, 32, x.shape[0])
    >>> x[idx].shape
    (32, 64)
"""

from jaxtune.data.batching import batch_from_permutations as batch_from_permutations
from jaxtune.data.batching import batch_indices as batch_indices
from jaxtune.data.batching import epoch_permutations as epoch_permutations
from jaxtune.data.batching import padded_batch_indices as padded_batch_indices
from jaxtune.data.loaders import load_diabetes as load_diabetes
from jaxtune.data.loaders import load_digits as load_digits
from jaxtune.data.loaders import make_classification as make_classification
from jaxtune.data.splits import Splits as Splits
from jaxtune.data.splits import check_classification as check_classification
from jaxtune.data.splits import check_splits as check_splits
from jaxtune.data.splits import input_shape as input_shape
from jaxtune.data.splits import num_classes as num_classes
from jaxtune.data.splits import num_examples as num_examples
from jaxtune.data.splits import subset as subset
from jaxtune.data.splits import with_validation as with_validation
from jaxtune.data.standardize import Standardizer as Standardizer
from jaxtune.data.text import load_stdlib_text as load_stdlib_text

__all__ = [
    "Splits",
    "Standardizer",
    "batch_from_permutations",
    "batch_indices",
    "check_classification",
    "check_splits",
    "epoch_permutations",
    "input_shape",
    "load_diabetes",
    "load_digits",
    "load_stdlib_text",
    "make_classification",
    "num_classes",
    "num_examples",
    "padded_batch_indices",
    "subset",
    "with_validation",
]
