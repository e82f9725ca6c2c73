"""fcn-jax: Fully Convolutional Networks in JAX/Flax for abdominal CT segmentation."""
