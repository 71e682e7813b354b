"""Converts pytorch-fid's InceptionV3 weights to the .npz that `inception.load_variables` reads.

Usage:
  python -m gan.evaluation.convert_inception SRC.pth [DST.npz]
  python -m gan.evaluation.convert_inception --check [SRC.pth]

SRC is pytorch-fid's weight file (`inception.SOURCE_FILENAME`, at `inception.SOURCE_URL`; `--help`
prints its name). DST defaults to the path `inception.load_variables()` looks at
($JAXGAN_INCEPTION_WEIGHTS, else `inception.DEFAULT_WEIGHTS_PATH`). Reading the .pth needs torch.

`--check` needs torch and pytorch-fid (`pip install torch pytorch-fid`) next to JAX. It builds
pytorch-fid's FIDInceptionV3 exactly as `pytorch_fid.inception.fid_inception_v3` does but
without downloading: with SRC it loads those weights, without it draws random weights and
random batch-norm statistics. It converts the state dict, runs pytorch-fid's `InceptionV3`
wrapper (its resize and normalisation) and this package's feature function on the same random
uint8 images, and prints the largest absolute differences of pool3 and logits.

The mapping itself (`convert_state_dict`) works on numpy arrays, so it is testable without torch.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from collections.abc import Mapping
from typing import Any
from unittest import mock

import numpy as np
from flax import traverse_util

from gan.evaluation import inception

# torch leaf name -> (Flax collection, Flax leaf name), for the modules inside a BasicConv2d.
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Maps a pytorch-fid FIDInceptionV3 state dict to FIDInceptionV3's Flax variables.

  Args:
    state_dict: torch parameter name -> array (e.g. "Mixed_5b.branch1x1.conv.weight").
      `num_batches_tracked` counters are ignored.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 numpy arrays: conv weights transposed
    from (out, in, kh, kw) to (kh, kw, in, out), `fc.weight` from (out, in) to (in, out).

  Raises:
    ValueError: a name has no Flax counterpart, or the result is not exactly the model's
      variable tree (missing variables, wrong shapes).
  """
  flat = {}
  unknown = []
  for name, value in state_dict.items():
    *module, leaf = name.split(".")
    value = np.asarray(value, dtype=np.float32)
    last = module[-1] if module else None
    if last == "conv" and leaf == "weight":
      flat[("params", *module, "kernel")] = value.transpose(2, 3, 1, 0)
    elif last == "bn" and leaf in _BN_LEAVES:
      collection, flax_leaf = _BN_LEAVES[leaf]
      flat[(collection, *module, flax_leaf)] = value
    elif last == "bn" and leaf == "num_batches_tracked":
      continue
    elif module == ["fc"] and leaf in ("weight", "bias"):
      flat[("params", "fc", "kernel" if leaf == "weight" else "bias")] = value.T
    else:
      unknown.append(name)
  if unknown:
    raise ValueError(f"state dict names with no FIDInceptionV3 variable: {unknown[:20]}")
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


def _import_torch():
  try:
    import torch  # Optional: only conversion and --check need it.
  except ImportError as e:
    raise SystemExit("reading the .pth needs PyTorch (CPU is enough): pip install torch") from e
  return torch


def _read_pth(path: str) -> dict[str, np.ndarray]:
  torch = _import_torch()
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  return {name: tensor.numpy() for name, tensor in state_dict.items()}


def convert(src: str, dst: str | None = None) -> str:
  """Converts the .pth at `src` and writes it to `dst` (default: `inception.weights_path()`)."""
  dst = inception.weights_path(dst)
  variables = convert_state_dict(_read_pth(src))
  save_npz(dst, variables)
  return dst


def _build_torch_model(torch, fid, src: str | None, seed: int):
  """pytorch-fid's FIDInceptionV3: `fid_inception_v3()` minus the download."""
  torch.manual_seed(seed)  # torch's initialisers draw from the global generator; so does the rest
  net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = fid.FIDInceptionE_1(1280)
  net.Mixed_7c = fid.FIDInceptionE_2(2048)
  if src:
    net.load_state_dict(torch.load(src, map_location="cpu", weights_only=True))
    return net.eval()
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.copy_(0.5 + torch.rand(bn.num_features))
      bn.bias.copy_(0.2 * torch.randn(bn.num_features))
      bn.reset_running_stats()
      bn.momentum = None  # the running statistics become those of the one batch below
    # Statistics measured on a batch keep every layer's activations well scaled; perturbing
    # them afterwards makes sure no batch norm is close to an identity or a pure standardiser.
    net.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    for bn in bns:
      noise = torch.randn(bn.num_features)
      bn.running_mean.add_(0.1 * bn.running_var.sqrt() * noise)
      bn.running_var.mul_(0.8 + 0.45 * torch.rand(bn.num_features))
    net.fc.bias.copy_(torch.randn(1008))
  return net.eval()


def check(src: str | None = None, num_images: int = 2, seed: int = 0) -> dict[str, float]:
  """Compares preprocessing and model with pytorch-fid's; returns max |difference| per size.

  "input" is the network input (pytorch-fid's resize and 2x - 1, written out here because its
  wrapper does not expose it); "pool3" and "logits" are the outputs.
  """
  torch = _import_torch()
  try:
    from pytorch_fid import inception as fid
  except ImportError as e:
    raise SystemExit("--check needs pytorch-fid: pip install pytorch-fid") from e

  net = _build_torch_model(torch, fid, src, seed)
  print(f"pytorch-fid FIDInceptionV3: {sum(p.numel() for p in net.parameters()):,} parameters")
  # pytorch-fid's own wrapper, for its resize, normalisation and block order.
  with mock.patch.object(fid, "fid_inception_v3", lambda: net):
    wrapper = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  variables = convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  feature_fn = inception.make_feature_fn(variables)

  rng = np.random.default_rng(seed)
  results = {}
  for size in (32, 299, 400):  # upsampled, not resized, downsampled
    images = rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
      x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
      resized = torch.nn.functional.interpolate(
          x, size=(299, 299), mode="bilinear", align_corners=False
      )
      pool3 = wrapper(x)[0].flatten(1)
      reference = {
          "input": (2 * resized - 1).permute(0, 2, 3, 1).numpy(),
          "pool3": pool3.numpy(),
          "logits": net.fc(pool3).numpy(),
      }
    ours = dict(feature_fn(images), input=inception.preprocess(images))
    for key, expected in reference.items():
      diff = float(np.max(np.abs(np.asarray(ours[key]) - expected)))
      scale = float(np.max(np.abs(expected)))
      results[f"{size}x{size}/{key}"] = diff
      print(f"{size}x{size} {key:7s} max|diff| {diff:.3e}   max|torch| {scale:.3e}")
  return results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src", nargs="?", help=f"pytorch-fid's {inception.SOURCE_FILENAME}")
  parser.add_argument("dst", nargs="?", help="output .npz (default: the loader's path)")
  parser.add_argument("--check", action="store_true", help="compare with pytorch-fid instead")
  args = parser.parse_args(argv)
  if args.check:
    check(args.src)
    return
  if not args.src:
    parser.error("SRC.pth is required unless --check is given")
  dst = convert(args.src, args.dst)
  print(f"source {args.src}: sha256 {inception.weights_sha256(args.src)}")
  print(f"wrote {dst}: sha256 {inception.weights_sha256(dst)}")


if __name__ == "__main__":
  main()
