"""jaxtune: a JAX toolkit for tuning neural networks."""
