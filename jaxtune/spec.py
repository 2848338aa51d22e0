"""What a value may be, said once: a :class:`KeySpec` describes itself and checks a value.

Configuration keys (:data:`jaxtune.config.KEYS`, the ``[tune]`` table) and the arguments of
the schedules, optimizers and model builders state their allowed values as ``KeySpec`` objects,
so the check and the message that names the allowed values come from one place. The same spec
fails in the voice of its caller:

* :meth:`KeySpec.check` for a configuration key raises :class:`jaxtune.ConfigError`
  ``"<key> = <value> is invalid: expected <allowed>"``;
* :func:`check_arg` for a function argument raises :class:`ValueError`
  ``"<name> = <value> is invalid: <name> must be <allowed>"``.

Numbers that a sweep traces (learning rates, decay rates, step counts) use the ``"array"``
kind: a concrete value (a Python number or a JAX / NumPy array) is checked elementwise, a traced
one is taken as given.

Example:
    >>> KeySpec("int", 500, low=1).check("train.steps", 20.0)
    20
    >>> KeySpec("choice", "relu", ("relu", "gelu")).describe()
    "one of 'relu', 'gelu'"
    >>> check_arg("every", 0, POSITIVE)
    Traceback (most recent call last):
    ...
    ValueError: every = 0 is invalid: every must be a number in (0, inf)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import ConfigError

__all__ = [
    "FRACTION",
    "KINDS",
    "NON_NEGATIVE",
    "POSITIVE",
    "SCHEDULE",
    "KeySpec",
    "check_arg",
    "concrete",
]

#: The kinds of value a :class:`KeySpec` can describe.
KINDS = (
    "choice",  # one of ``choices``
    "bool",  # True or False
    "str",  # a non-empty string
    "int",  # a Python integer (an integral float is accepted), within the bounds
    "float",  # a Python number, within the bounds
    "array",  # a number or array, checked elementwise when concrete; tracers pass
    "sizes",  # a list of positive integers, possibly empty (one integer is a list of one)
    "shape",  # a non-empty list of positive integers
    "auto_int",  # one of ``choices`` (words such as "auto") or a positive integer
    "dtype",  # a dtype name or a jnp dtype, normalised to its name; one of ``choices``
    "init",  # an initializer name as :func:`jaxtune.initializers.get_initializer` reads it
    "callable",  # any callable
    "custom",  # ``parser(value)`` returns the value or raises ValueError
)
_NUMBER_KINDS = ("int", "float", "array")


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """The allowed values of one key or argument, and its default.

    Attributes:
      kind: One of :data:`KINDS`.
      default: The value used when none is given.
      choices: The allowed values of ``"choice"`` and ``"dtype"``; the words that
        ``"auto_int"`` accepts besides a positive integer.
      low, high: Bounds of the numeric kinds (``None``: unbounded).
      low_open, high_open: Whether a bound itself is excluded.
      optional: Whether ``None`` is allowed (it means unset).
      text: A description replacing the kind's own (required for ``"custom"``).
      parser: For ``"custom"``: ``parser(value)`` returns the (normalised) value or raises
        ``ValueError``; a non-empty message replaces "expected <description>" in the error.
    """

    kind: str
    default: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    text: str | None = None
    parser: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind = {self.kind!r} is invalid: kind must be one of {KINDS}")
        if self.kind == "custom" and (self.parser is None or self.text is None):
            raise ValueError("a 'custom' KeySpec needs a parser and a text")

    def describe(self) -> str:
        """The allowed values in words, e.g. ``"a number in (0, inf)"``."""
        unset = " or null (unset)" if self.optional else ""
        return (self.text or self._describe_kind()) + unset

    def _describe_kind(self) -> str:
        kind = self.kind
        if kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if kind == "dtype":
            names = ", ".join(repr(c) for c in self.choices)
            return f"one of {names} (a name or a jnp dtype)"
        if kind == "auto_int":
            return " or ".join([*(repr(c) for c in self.choices), "a positive integer"])
        if kind in _NUMBER_KINDS:
            return f"{'an integer' if kind == 'int' else 'a number'} in {self._interval()}"
        return {
            "bool": "true or false",
            "str": "a non-empty string",
            "sizes": "a list of positive integers",
            "shape": "a non-empty list of positive integers",
            "init": "an initializer preset name (e.g. 'he_normal') or 'normal(STDDEV)'",
            "callable": "a callable",
        }[kind]

    def _interval(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def _within(self, v: Any) -> Any:
        """Whether ``v`` (a number or a NumPy array, elementwise) lies within the bounds."""
        ok = np.ones(np.shape(v), dtype=bool)
        if self.low is not None:
            ok &= (v > self.low) if self.low_open else (v >= self.low)
        if self.high is not None:
            ok &= (v < self.high) if self.high_open else (v <= self.high)
        return bool(np.all(ok))

    def parse(self, value: Any) -> Any:
        """The value, normalised (tuples for lists, ``int``/``float`` for numbers).

        Raises:
          ValueError: if the value is not allowed; an empty message means "not of the
            described kind" (a specific reason otherwise).
        """
        if value is None:
            if self.optional:
                return None
            raise ValueError("")
        parse = _PARSERS.get(self.kind)
        return parse(self, value) if parse else self.parser(value)  # type: ignore[misc]

    def check(self, key: str, value: Any) -> Any:
        """:meth:`parse` for the configuration key ``key``.

        Raises:
          ConfigError: ``"<key> = <value> is invalid: expected <allowed values>"``.
        """
        try:
            return self.parse(value)
        except ValueError as e:
            reason = str(e) or f"expected {self.describe()}"
            raise ConfigError(f"{key} = {value!r} is invalid: {reason}") from None


def check_arg(name: str, value: Any, spec: KeySpec) -> Any:
    """Checks the function argument ``name`` against ``spec``; returns the parsed value.

    Args:
      name: The argument's name, used in the message.
      value: The value given.
      spec: What the argument allows.

    Returns:
      The value, normalised by :meth:`KeySpec.parse` (a traced array is returned as is).

    Raises:
      ValueError: ``"<name> = <value> is invalid: <name> must be <allowed values>"``.

    Example:
      >>> check_arg("rate", 0.5, KeySpec("float", low=0.0, high=1.0, high_open=True))
      0.5
    """
    try:
        return spec.parse(value)
    except ValueError as e:
        reason = str(e) or f"{name} must be {spec.describe()}"
        raise ValueError(f"{name} = {value!r} is invalid: {reason}") from None


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a float64 NumPy array, or ``None`` when it is a JAX tracer.

    Raises:
      TypeError, ValueError: if the value is not numeric.

    Example:
      >>> concrete(2) + 0.5
      np.float64(2.5)
    """
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_number(spec: KeySpec, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("")
    if spec.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("")
        value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value) or not spec._within(value):
        raise ValueError("")
    return value


def _parse_array(spec: KeySpec, value: Any) -> Any:
    try:
        array = concrete(value)
    except (TypeError, ValueError):
        raise ValueError("") from None
    if array is not None and not spec._within(array):
        raise ValueError("")
    return value


def _parse_sizes(spec: KeySpec, value: Any) -> tuple[int, ...]:
    if _is_int(value):
        value = [value]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError("")
    if not all(_is_int(v) and v > 0 for v in value) or (spec.kind == "shape" and not value):
        raise ValueError("")
    return tuple(int(v) for v in value)


def _parse_choice(spec: KeySpec, value: Any) -> Any:
    if value not in spec.choices:
        raise ValueError("")
    return value


def _parse_auto_int(spec: KeySpec, value: Any) -> Any:
    if isinstance(value, str):
        return _parse_choice(spec, value)
    if not _is_int(value) or value < 1:
        raise ValueError("")
    return value


def _parse_dtype(spec: KeySpec, value: Any) -> str:
    try:
        name = jnp.dtype(value).name
    except TypeError:
        raise ValueError("") from None
    return _parse_choice(spec, name)


def _parse_init(spec: KeySpec, value: Any) -> str:
    from jaxtune.initializers import get_initializer

    if not isinstance(value, str):
        raise ValueError("")
    get_initializer(value)  # its ValueError names the allowed presets
    return value


def _parse_type(test: Callable[[Any], bool]) -> Callable[[KeySpec, Any], Any]:
    def parse(spec: KeySpec, value: Any) -> Any:
        if not test(value):
            raise ValueError("")
        return value

    return parse


_PARSERS: dict[str, Callable[[KeySpec, Any], Any]] = {
    "choice": _parse_choice,
    "bool": _parse_type(lambda v: isinstance(v, bool)),
    "str": _parse_type(lambda v: isinstance(v, str) and bool(v)),
    "int": _parse_number,
    "float": _parse_number,
    "array": _parse_array,
    "sizes": _parse_sizes,
    "shape": _parse_sizes,
    "auto_int": _parse_auto_int,
    "dtype": _parse_dtype,
    "init": _parse_init,
    "callable": _parse_type(callable),
}

#: A traced-or-concrete number > 0 (learning rates, decay rates, step counts, norms).
POSITIVE = KeySpec("array", low=0.0, low_open=True)
#: A traced-or-concrete number >= 0.
NON_NEGATIVE = KeySpec("array", low=0.0)
#: A traced-or-concrete number in [0, 1) (momenta, decay factors of moving averages).
FRACTION = KeySpec("array", low=0.0, high=1.0, high_open=True)
#: A learning-rate schedule: a function of the step count.
SCHEDULE = KeySpec("callable", text="a callable step -> value")
