"""Independent pieces the tests compare the engine against (written without the engine)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax


def mlp_forward(params, x, *, act=jax.nn.relu):
    """The forward pass of a ``jaxtune.mlp`` params tree (``Dense_0`` ... ``Dense_k``), by hand."""
    layers = sorted(params, key=lambda name: int(name.split("_")[1]))
    for i, name in enumerate(layers):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i < len(layers) - 1:
            x = act(x)
    return x


def batch_of(data_key, t, n, bs):
    """The documented batch rule: the ``t % (n // bs)``-th slice of epoch ``t // (n // bs)``'s
    permutation ``jax.random.permutation(fold_in(data_key, epoch), n)``."""
    spe = n // bs
    perm = jax.random.permutation(jax.random.fold_in(data_key, t // spe), n)
    return jax.lax.dynamic_slice(perm, ((t % spe) * bs,), (bs,))


def optax_loop(
    model,
    train,
    tx,
    *,
    steps,
    batch_size,
    seed=0,
    lr_schedule=None,
    clip=None,
    init_scale=1.0,
    dropout=False,
    forward=None,
    loss=None,
    augment=None,
):
    """One trial trained by a plain optax loop, the way the engine documents a trial trains.

    Keys: ``init_key, data_key, dropout_key, augment_key = split(PRNGKey(seed), 4)``; the batch
    of step ``t`` is :func:`batch_of`, augmented by ``augment(fold_in(augment_key, t), x)`` when
    given; the loss is the mean of ``loss(outputs, y)`` (default: softmax cross-entropy of
    integer labels). ``model`` is a
    ``jaxtune`` model pair (flax underneath; its BatchNorm statistics are carried along);
    ``forward(params, x)`` replaces ``model.apply`` for a hand-written forward pass. A step
    whose loss or gradient norm is not finite leaves everything unchanged and ends the loop
    (the quarantine rule).

    Returns:
      ``(params, model_state, history)``: history has ``loss``, ``grad``, ``lr`` and ``clipped``
      per step taken, and ``diverged_step`` (None while finite).
    """
    init_key, data_key, drop_key, aug_key = jax.random.split(jax.random.PRNGKey(seed), 4)
    per_example = loss or optax.softmax_cross_entropy_with_integer_labels
    x_all, y_all = (jnp.asarray(a) for a in train)
    n = x_all.shape[0]
    params, model_state = model.init(init_key)
    if init_scale != 1.0:
        params = jax.tree_util.tree_map_with_path(
            lambda p, a: a * init_scale if p[-1].key == "kernel" else a, params
        )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, model_state, opt_state, t):
        idx = batch_of(data_key, t, n, batch_size)
        x, y = x_all[idx], y_all[idx]
        if augment is not None:
            x = augment(jax.random.fold_in(aug_key, t), x)

        def loss_fn(p):
            if forward is not None:
                logits, new_state = forward(p, x), model_state
            else:
                key = jax.random.fold_in(drop_key, t) if dropout else None
                logits, new_state = model.apply(p, model_state, x, train=True, key=key)
            return per_example(logits, y).mean(), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, new_state, new_opt, loss, optax.tree.norm(grads)

    hist = {"loss": [], "lr": [], "grad": [], "clipped": [], "diverged_step": None}
    for t in range(steps):
        new = step(params, model_state, opt_state, t)
        loss, gn = float(new[3]), float(new[4])
        if not (np.isfinite(loss) and np.isfinite(gn)):
            hist["diverged_step"] = t
            break
        params, model_state, opt_state = new[:3]
        hist["loss"].append(loss)
        hist["grad"].append(gn)
        hist["lr"].append(float(lr_schedule(t)) if lr_schedule is not None else np.nan)
        hist["clipped"].append(clip is not None and gn > clip)
    out = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in hist.items()}
    return params, model_state, out


def accuracy(model, params, model_state, split):
    """Accuracy of a trained trial on a whole split (evaluation mode)."""
    x, y = (jnp.asarray(a) for a in split)
    logits, _ = model.apply(params, model_state, x, train=False)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def assert_tree_close(a, b, rtol=2e-5, atol=2e-6):
    """Every leaf of two trees equal to the given tolerance."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


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


__all__ = [
    "accuracy",
    "assert_tree_close",
    "batch_of",
    "count_compiles",
    "mlp_forward",
    "optax_loop",
]
