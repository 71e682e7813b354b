"""ZCA whitening: fitted once on the training images, applied as a fixed first layer.

ZCA (Bell & Sejnowski 1997) maps a flattened image x to W (x - mu) with
W = U diag(1 / sqrt(s + eps)) U^T, where U diag(s) U^T is the eigen-
decomposition of the pixels' covariance: the whitened pixels have identity
covariance (up to eps) and, among all whitening matrices, stay closest to the
original image. `fit_zca` computes mu and W in float64 from training images
scaled to [-1, 1] (eps 1e-5, the value of Laine & Aila's and Triple-GAN's
CIFAR-10 code, which fit it on their [-1, 1]-ish pixels too). The `ZCA` layer
holds them as non-trained variables ("batch_stats"/"zca_mean", "zca_matrix"),
so checkpoints and the classifier view carry the whitening with the network.
The layer is initialised from a fit passed to `init` (`whitening=`), or as the
identity.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gan import data as data_lib

REGULARIZATION = 1e-5


def fit_zca(
    images: np.ndarray, regularization: float = REGULARIZATION, chunk: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
  """(mean (D,), matrix (D, D)), float32, of uint8 images (N, ...) scaled to [-1, 1].

  The covariance is accumulated in float64 over chunks of images, so the
  float copy of the data set is never made whole.
  """
  n = len(images)
  dim = int(np.prod(images.shape[1:]))
  total, outer = np.zeros(dim), np.zeros((dim, dim))
  for start in range(0, n, chunk):
    x = data_lib.to_float(images[start : start + chunk].reshape(-1, dim), np.float64)
    total += x.sum(axis=0)
    outer += x.T @ x
  mean = total / n
  covariance = outer / n - np.outer(mean, mean)
  s, u = np.linalg.eigh(covariance)
  s = np.maximum(s, 0.0)  # round-off can make the smallest eigenvalues slightly negative
  matrix = (u / np.sqrt(s + regularization)) @ u.T
  return mean.astype(np.float32), matrix.astype(np.float32)


class ZCA(nn.Module):
  """Images (B, H, W, C) -> whitened images of the same shape."""

  @nn.compact
  def __call__(
      self, x: jax.Array, whitening: tuple[np.ndarray, np.ndarray] | None = None
  ) -> jax.Array:
    dim = int(np.prod(x.shape[1:]))
    fitted = whitening is not None
    mean = self.variable(
        "batch_stats", "zca_mean", lambda: jnp.asarray(whitening[0]) if fitted else jnp.zeros(dim)
    )
    matrix = self.variable(
        "batch_stats", "zca_matrix", lambda: jnp.asarray(whitening[1]) if fitted else jnp.eye(dim)
    )
    flat = x.reshape(x.shape[0], dim) - mean.value
    # W is symmetric: (x - mu) W is W (x - mu) for a row of the batch.
    return (flat @ matrix.value).reshape(x.shape)
