"""Independent pieces the tests compare the engine against (written without jaxtune)."""

import contextlib

import jax


def mlp_forward(params, x, *, act=jax.nn.relu):
    """The forward pass of a ``jaxtune.mlp`` params tree (``Dense_0`` ... ``Dense_k``), by hand."""
    layers = sorted(params, key=lambda name: int(name.split("_")[1]))
    for i, name in enumerate(layers):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i < len(layers) - 1:
            x = act(x)
    return x


@contextlib.contextmanager
def count_compiles():
    """Collect one entry per XLA backend compilation inside the ``with`` block."""
    events = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


__all__ = ["count_compiles", "mlp_forward"]
