"""The InceptionV3 that FID and Inception Score are defined with: network, input protocol, weights.

The network is the TensorFlow Inception graph of December 2015 (`GRAPH_NAME`, shipped as
`<GRAPH_NAME>.tgz`) that the original FID code (TTUR) and Inception Score code
(openai/improved-gan) run, as ported by pytorch-fid (`pytorch_fid.inception.FIDInceptionV3`).
It is not torchvision's InceptionV3:

- the average-pool branches of the A, C and first E blocks (`Mixed_5b-d`, `Mixed_6b-e`,
  `Mixed_7b`) average over valid pixels only (TF's pooling; torch's `count_include_pad=False`),
- the pool branch of the last E block (`Mixed_7c`) uses a 3x3 max pool, not an average pool,
- batch norm uses epsilon 1e-3, there is no auxiliary classifier and `fc` has 1008 classes.

Module and variable names follow the torch ones (`Mixed_6b/branch7x7_2/conv/kernel`), so the
weight conversion in `convert_inception` is a renaming plus transposes. Batch-norm statistics
are kept unfolded in the `batch_stats` collection and always used as stored (inference only):
the variable tree then corresponds one-to-one to the published state dict.

The model returns `pool3` (N, 2048), the global-average-pooled features FID uses; `logits`
(N, 1008), the output of `fc`; and `logits_unbiased`, the same without `fc`'s bias, which is
what the original Inception Score code computed its softmax from (`pool3 @ W`), and which
torch-fidelity and torchmetrics use for IS by default.

Input protocol (`preprocess`), as pytorch-fid applies it to image files:
  uint8 u  ->  u / 255 (float32)  ->  bilinear resize to 299x299  ->  2x - 1.
The resize is `jax.image.resize(..., "bilinear", antialias=False)`: half-pixel centres with
edge clamping, the same sampling as pytorch-fid's `F.interpolate(mode="bilinear",
align_corners=False)` when upsampling and downsampling (equal up to float rounding; checked by
`python -m gan.evaluation.convert_inception --check`). `antialias=False` matters: JAX's default
(antialias=True) widens the kernel when downsampling and would not match pytorch-fid for
inputs larger than 299. Images already 299x299 are not resampled.

The TF original differs from pytorch-fid (and so from this module) in two places, which is why
FIDs from TTUR and pytorch-fid differ slightly: its graph resizes with TF1 `ResizeBilinear`
(align_corners=False but without half-pixel centres, i.e. source = dest * in/out), and it
normalises with (u - 128) / 128, mapping 255 to 0.9921875 instead of 1.

Weights: pytorch-fid's port of that graph (`SOURCE_FILENAME`), converted once to .npz by
`python -m gan.evaluation.convert_inception` (see `InceptionWeightsNotFoundError`).
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

# Google named the graph after its release date, and pytorch-fid's port and our converted
# weights are named after the graph, so that date is part of every file name here.
GRAPH_DATE = datetime.date(2015, 12, 5).isoformat()
GRAPH_NAME = f"inception-{GRAPH_DATE}"
WEIGHTS_ENV_VAR = "JAXGAN_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_PATH = f"~/.cache/jaxgan/inception/pt_{GRAPH_NAME}.npz"
SOURCE_FILENAME = f"pt_{GRAPH_NAME}-6726825d.pth"
SOURCE_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + SOURCE_FILENAME
)
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008

# XLA's default float32 precision on TPU (and TF32 on recent GPUs) runs convolutions with
# bfloat16-like inputs; FID is sensitive to feature noise, so the features are computed at full
# float32 precision on every backend.
_PRECISION = jax.lax.Precision.HIGHEST

Variables = Mapping[str, Any]
FeatureFn = Callable[[Any], dict[str, jax.Array]]


class BasicConv(nn.Module):
  """Convolution without bias -> batch norm (stored statistics, eps 1e-3) -> ReLU.

  Attributes:
    features: output channels.
    kernel_size: (height, width) of the kernel.
    strides: stride in both spatial dimensions.
    padding: zero padding (height, width) added on both sides, as torch's `padding`.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(
        self.features,
        self.kernel_size,
        strides=self.strides,
        padding=((pad_h, pad_h), (pad_w, pad_w)),
        use_bias=False,
        precision=_PRECISION,
        name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF's average pool divides by the number of valid pixels; zero padding is not counted.
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  """35x35 block (`Mixed_5b-d`): 1x1, 5x5, double 3x3 and average-pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (`Mixed_6a`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (`Mixed_6b-e`) with factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (`Mixed_7a`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (`Mixed_7b`, `Mixed_7c`) with split 1x3 / 3x1 outputs.

  Attributes:
    pool: "avg" for `Mixed_7b`; "max" for `Mixed_7c`, where the 2015 graph max-pools (most
      likely a bug in that graph, but it defines the published features).
  """

  pool: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
        [
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ],
        axis=-1,
    )
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
        [
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ],
        axis=-1,
    )
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Maps images (N, 299, 299, 3) in [-1, 1] to {"pool3", "logits", "logits_unbiased"}.

  Inference only: apply with {"params", "batch_stats"} and no mutable collections.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, stride=2)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, stride=2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=_PRECISION, name="fc")
    logits = fc(pool3)
    unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=_PRECISION)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


def preprocess(images: Any, quantize: bool = True) -> jax.Array:
  """Applies the FID input protocol: (N, H, W, C) images -> (N, 299, 299, 3) float32 in [-1, 1].

  Args:
    images: uint8 in [0, 255], or float in [-1, 1] (generator output); C is 3, or 1 for
      grayscale, which is repeated to RGB as PIL's `convert("RGB")` does in pytorch-fid.
    quantize: for float input, first round to the 256 levels of an 8-bit image
      (u = round(127.5 * (x + 1))), so generated samples are measured as if saved to PNG,
      like the data they are compared with. Exact inverse of u -> 2u/255 - 1.

  Returns:
    The network input; see the module docstring for how it relates to pytorch-fid and TF.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape (N, H, W, 1 or 3), got {images.shape}")
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(images.dtype, jnp.floating):
    x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0
    x = jnp.round(127.5 * x) / 255.0 if quantize else x / 2.0
  else:
    raise ValueError(f"expected uint8 or float images, got {images.dtype}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  shape = (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3)
  if x.shape != shape:
    x = jax.image.resize(x, shape, method="bilinear", antialias=False)
  return 2.0 * x - 1.0


@jax.jit
def _features(variables: Variables, images: jax.Array) -> dict[str, jax.Array]:
  # One jitted function for the module, so every feature fn shares its compilations.
  return FIDInceptionV3().apply(variables, preprocess(images))


def make_feature_fn(variables: Variables) -> FeatureFn:
  """Returns jitted `fn(images) -> {"pool3", "logits", "logits_unbiased"}`.

  `images` is anything `preprocess` takes; the function compiles once per input shape and
  dtype, so callers should feed batches of one fixed size. The variables are passed to the
  compiled function as arguments, not baked into it as ~95 MB of constants.
  """
  return functools.partial(_features, jax.device_put(variables))


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
        f"To create them:\n"
        f"  1. Download pytorch-fid's {SOURCE_FILENAME} from\n"
        f"     {SOURCE_URL}\n"
        f"  2. Convert it to .npz (needs torch: pip install torch):\n"
        f"     python -m gan.evaluation.convert_inception {SOURCE_FILENAME} {path}\n"
        f"  3. Keep the result at the default path {DEFAULT_WEIGHTS_PATH}, or elsewhere and\n"
        f"     set {WEIGHTS_ENV_VAR}=/path/to/weights.npz (or pass the path explicitly)."
    )
    self.path = path


def weights_path(path: str | None = None) -> str:
  """The .npz path used: `path`, else $JAXGAN_INCEPTION_WEIGHTS, else DEFAULT_WEIGHTS_PATH."""
  return os.path.expanduser(path or os.environ.get(WEIGHTS_ENV_VAR) or DEFAULT_WEIGHTS_PATH)


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

  The converter writes the .npz deterministically, so the same .pth always gives the same hash.
  """
  path = weights_path(path)
  if not os.path.isfile(path):
    raise InceptionWeightsNotFoundError(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
