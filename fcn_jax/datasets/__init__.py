"""Datasets of fcn-jax. `import fcn_jax.datasets.ircad` registers the `ircad` TFDS builder."""
