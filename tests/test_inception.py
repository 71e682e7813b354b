"""Tests for the FID InceptionV3: architecture, input protocol, weight conversion and loading.

Neither torch nor the published weights are needed: the network runs with random weights, and
the converter is fed a synthetic state dict that is checked to be named and shaped exactly like
pytorch-fid's. The numerical comparison with pytorch-fid itself is
`python -m gan.evaluation.convert_inception --check`, which needs torch.
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
from gan.evaluation import convert_inception, evaluators, inception

# pytorch-fid 0.3.0's FIDInceptionV3, built as `fid_inception_v3()` builds it (torchvision
# 0.29): sum(p.numel() for p in model.parameters() if p.requires_grad), and the same sum over
# the running means and variances.
PUBLISHED_NUM_PARAMS = 23_850_960
PUBLISHED_NUM_BN_STATS = 34_432
# That model's state dict without the num_batches_tracked counters: its number of entries, and
# the SHA-256 of "name:d0,d1,..." lines (one per entry, sorted by name, joined by newlines).
TORCH_STATE_DICT_SIZE = 472
TORCH_STATE_DICT_SHA256 = "f76b93e6d9462d3119d86baf75186bf2bde4fb0f898d1a0cd82ba20302c66803"

_BN_TO_TORCH = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


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
    elif leaf in ("scale", "var"):
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


def _torch_state_dict(shapes, rng):
  """A random state dict with the names and shapes pytorch-fid's would have for `shapes`."""
  state_dict = {}
  for name, shape in shapes.items():
    _, *module, leaf = name.split("/")
    prefix = ".".join(module)
    if leaf == "kernel" and module[-1] == "conv":
      state_dict[f"{prefix}.weight"] = rng.normal(size=(shape[3], shape[2], shape[0], shape[1]))
    elif leaf == "kernel":
      state_dict[f"{prefix}.weight"] = rng.normal(size=shape[::-1])
    elif module[-1] == "bn":
      state_dict[f"{prefix}.{_BN_TO_TORCH[leaf]}"] = rng.normal(size=shape)
      state_dict[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)
    else:
      state_dict[f"{prefix}.{leaf}"] = rng.normal(size=shape)
  return state_dict


def test_parameter_count_matches_published_network(shapes):
  def count(prefix):
    return sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith(prefix))

  assert count("params/") == PUBLISHED_NUM_PARAMS
  assert count("batch_stats/") == PUBLISHED_NUM_BN_STATS


def test_outputs(feature_fn, variables, images):
  out = feature_fn(images)
  assert out["pool3"].shape == (2, inception.NUM_FEATURES) == (2, 2048)
  assert out["logits"].shape == out["logits_unbiased"].shape == (2, inception.NUM_CLASSES)
  assert all(np.isfinite(v).all() for v in out.values())
  # pool3 averages ReLU outputs; the two images must not collapse to the same features.
  assert (out["pool3"] >= 0).all() and np.ptp(out["pool3"], axis=0).max() > 1e-3
  np.testing.assert_allclose(
      out["logits"] - out["logits_unbiased"],
      np.broadcast_to(variables["params"]["fc"]["bias"], (2, 1008)),
      atol=1e-4,
  )


def test_deterministic(feature_fn, images):
  first = jax.device_get(feature_fn(images))
  second = jax.device_get(feature_fn(images.copy()))
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_preprocess_shape_and_range(images):
  x = inception.preprocess(images)
  assert x.shape == (2, 299, 299, 3) and x.dtype == jnp.float32
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
  black, white = (np.full((1, 8, 8, 3), v, np.uint8) for v in (0, 255))
  np.testing.assert_allclose(inception.preprocess(black), -1.0, atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(white), 1.0, atol=1e-6)
  # 299x299 input is only rescaled: u -> 2u/255 - 1.
  u = np.random.default_rng(2).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_allclose(inception.preprocess(u), 2 * (u / 255.0) - 1, atol=1e-6)


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


def _torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """F.interpolate(mode="bilinear", align_corners=False) along one axis, as a matrix."""
  src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  weights = np.zeros((n_out, n_in))
  np.add.at(weights, (np.arange(n_out), lo), 1.0 - (src - lo))
  np.add.at(weights, (np.arange(n_out), hi), src - lo)
  return weights


@pytest.mark.parametrize("size", [32, 400])
def test_preprocess_resizes_like_pytorch_fid(size):
  u = np.random.default_rng(size).integers(0, 256, (1, size, size, 1), dtype=np.uint8)
  matrix = _torch_bilinear_matrix(size, 299)
  expected = 2.0 * (matrix @ (u[0, :, :, 0] / 255.0) @ matrix.T) - 1.0
  # The float64 reference differs from float32 resizing by ~4e-5 at 400 -> 299; JAX's default
  # antialiased downsampling differs by up to 0.8 here.
  np.testing.assert_allclose(inception.preprocess(u)[0, :, :, 0], expected, atol=1e-4)


def test_convert_state_dict_fills_exactly_the_model_variables(shapes):
  state_dict = _torch_state_dict(shapes, np.random.default_rng(3))
  spec = sorted((k, v.shape) for k, v in state_dict.items() if "num_batches" not in k)
  lines = "\n".join(f"{k}:{','.join(map(str, s))}" for k, s in spec)
  assert len(spec) == TORCH_STATE_DICT_SIZE
  assert hashlib.sha256(lines.encode()).hexdigest() == TORCH_STATE_DICT_SHA256

  converted = convert_inception.convert_state_dict(state_dict)
  flat = traverse_util.flatten_dict(converted, sep="/")
  assert {k: v.shape for k, v in flat.items()} == shapes
  assert all(v.dtype == np.float32 for v in flat.values())
  conv = "Mixed_6b.branch7x7_2.conv.weight"  # (out, in, 1, 7) -> (1, 7, in, out)
  np.testing.assert_array_equal(
      converted["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
      state_dict[conv].astype(np.float32).transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      converted["params"]["fc"]["kernel"], state_dict["fc.weight"].astype(np.float32).T
  )
  np.testing.assert_array_equal(
      converted["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
      state_dict["Mixed_7c.branch_pool.bn.running_var"].astype(np.float32),
  )


@pytest.mark.parametrize("mutation", ["extra", "missing", "shape"])
def test_convert_state_dict_rejects_mismatches(shapes, mutation):
  state_dict = _torch_state_dict(shapes, np.random.default_rng(4))
  if mutation == "extra":
    state_dict["AuxLogits.fc.weight"] = np.zeros((1008, 768))
  elif mutation == "missing":
    del state_dict["Mixed_5b.branch_pool.bn.running_mean"]
  else:
    state_dict["fc.bias"] = np.zeros(1000)
  with pytest.raises(ValueError, match="AuxLogits|missing|shape"):
    convert_inception.convert_state_dict(state_dict)


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


def test_missing_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError) as info:
    inception.load_variables()
  message = str(info.value)
  default = str(tmp_path / ".cache/jaxgan/inception/pt_inception-2015-12-05.npz")
  assert isinstance(info.value, inception.InceptionWeightsNotFoundError)
  assert "pt_inception-2015-12-05-6726825d.pth" in message
  assert inception.SOURCE_URL in message
  assert (
      "python -m gan.evaluation.convert_inception pt_inception-2015-12-05-6726825d.pth " + default
      in message
  )
  assert inception.WEIGHTS_ENV_VAR in message

  missing = str(tmp_path / "elsewhere.npz")
  with pytest.raises(FileNotFoundError, match="elsewhere.npz"):
    inception.load_variables(missing)
  with pytest.raises(FileNotFoundError, match="convert_inception"):
    inception.weights_sha256(missing)


def test_inception_evaluator_end_to_end(variables, images, tmp_path, monkeypatch):
  """FID/KID/IS/PR wiring with random weights, scoring the reference images themselves."""
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
      is_splits=2,
      batch_size=2,  # the batch shape the module's other tests compiled
      weights=weights,
  )
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
  assert result.protocol["weights_sha256"] == inception.weights_sha256(weights)
  assert result.protocol["num_reference"] == 6 and result.protocol["num_generated"] == 6
  assert os.listdir(tmp_path / "cache" / "inception_refs") == [
      f"cifar10-test-6-6-{where}-{inception.weights_sha256(weights)[:16]}.npz"
  ]
