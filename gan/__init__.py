"""jaxgan: GAN research in JAX/Flax. See README.md for the entry points."""
