"""sslocr_jax: self-supervised pretraining of text recognizers in JAX/Flax."""

__version__ = "0.1.0"
