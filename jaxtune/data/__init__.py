"""Data for jaxtune: splits, standardization, bundled datasets and deterministic batching.

Everything is local: the digits and diabetes data ship with scikit-learn and the synthetic
data comes from a seeded NumPy generator, so nothing is downloaded at run time. Inputs are
standardized with statistics of the training split only (:class:`Standardizer`). Splits larger
than device memory stay on the host (:class:`HostSource`: arrays, memmaps, grain data sources)
and are read by index, a chunk of batches at a time (:func:`stack_batches`, :class:`Prefetcher`).

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
from jaxtune.data.prefetch import Prefetcher as Prefetcher
from jaxtune.data.prefetch import eval_indices as eval_indices
from jaxtune.data.prefetch import stack_batches as stack_batches
from jaxtune.data.sources import HostSource as HostSource
from jaxtune.data.sources import as_source as as_source
from jaxtune.data.sources import check_source as check_source
from jaxtune.data.sources import is_host_source as is_host_source
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
    "HostSource",
    "Prefetcher",
    "Splits",
    "Standardizer",
    "as_source",
    "batch_from_permutations",
    "batch_indices",
    "check_classification",
    "check_source",
    "check_splits",
    "epoch_permutations",
    "eval_indices",
    "input_shape",
    "is_host_source",
    "load_diabetes",
    "load_digits",
    "load_stdlib_text",
    "make_classification",
    "num_classes",
    "num_examples",
    "padded_batch_indices",
    "stack_batches",
    "subset",
    "with_validation",
]
