"""Data: epochs without repeats, device-count independent batches, offline fallback, cache."""

import functools
import os
import time

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import data, utils

SHARED = conftest.TFDS_DATA_DIR


def _toy_data(n: int = 40):
  image = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return {"image": jnp.asarray(image), "label": jnp.arange(n, dtype=jnp.int32)}


def _batches(data_, key, global_batch, num_batches, devices=None):
  """Global batches as the step draws them (pmapped over `devices` when given)."""
  n = data_["image"].shape[0]
  perm = data.epoch_permutation(key, jnp.int32(0), n)
  out = []
  for b in range(num_batches):
    if devices is None:
      perm, batch = data.next_batch(data_, perm, key, jnp.int32(b), global_batch, None)
      out.append(np.asarray(batch["label"]))
    else:
      k = len(devices)
      fn = jax.pmap(
          functools.partial(
              data.next_batch,
              key=key,
              batch_number=jnp.int32(b),
              global_batch=global_batch,
              axis_name="data",
          ),
          axis_name="data",
          devices=devices,
      )
      replicated = jax.tree.map(
          lambda x, k=k: np.broadcast_to(np.asarray(x), (k, *x.shape)), (data_, perm)
      )
      perms, batch = fn(*replicated)
      perm = perms[0]
      out.append(np.asarray(batch["label"]).reshape(-1))
  return out


def test_each_epoch_visits_examples_once_and_reshuffles():
  key = jax.random.PRNGKey(0)
  batches = _batches(_toy_data(40), key, global_batch=8, num_batches=10)
  epoch0, epoch1 = np.concatenate(batches[:5]), np.concatenate(batches[5:])
  assert sorted(epoch0) == list(range(40)) and sorted(epoch1) == list(range(40))
  assert not np.array_equal(epoch0, epoch1)


def test_drop_remainder_when_batch_does_not_divide_the_epoch():
  batches = _batches(_toy_data(10), jax.random.PRNGKey(1), global_batch=4, num_batches=4)
  assert len(set(np.concatenate(batches[:2]))) == 8  # epoch 0: 2 batches, 2 examples skipped
  assert len(set(np.concatenate(batches[2:]))) == 8


def test_batches_do_not_depend_on_the_device_count():
  key = jax.random.PRNGKey(2)
  single = _batches(_toy_data(), key, 8, 6)
  for k in (2, 4):
    split = _batches(_toy_data(), key, 8, 6, devices=jax.devices()[:k])
    np.testing.assert_array_equal(np.stack(single), np.stack(split))


def test_images_are_scaled_to_minus_one_one():
  d = {"image": jnp.array([[[[0]]], [[[255]]]], jnp.uint8), "label": jnp.zeros(2, jnp.int32)}
  perm = jnp.array([0, 1], jnp.int32)
  _, batch = data.next_batch(d, perm, jax.random.PRNGKey(0), jnp.int32(1), 2, None)
  assert sorted(np.asarray(batch["image"]).ravel().tolist()) == [-1.0, 1.0]


def test_to_float_keeps_the_array_kind_and_its_dtype():
  pixels = np.array([0, 1, 128, 254, 255], np.uint8)
  host, device = data.to_float(pixels), data.to_float(jnp.asarray(pixels))
  assert isinstance(host, np.ndarray) and host.dtype == np.float32
  assert isinstance(device, jax.Array) and device.dtype == jnp.float32
  np.testing.assert_array_equal(host, np.asarray(device))
  assert host[0] == -1.0 and host[-1] == 1.0
  assert data.to_float(pixels, np.float64).dtype == np.float64


def test_a_batch_must_fit_the_split_except_for_points():
  split = data.Split(np.zeros((10, 2, 2, 1), np.uint8), np.zeros(10, np.int32), "test")
  data.check_batch_fits("mnist", split, 10)
  with pytest.raises(utils.ConfigError, match="batch_size 11 needs 11 training images"):
    data.check_batch_fits("mnist", split, 11)
  with pytest.raises(utils.ConfigError, match="batch_size 4 needs 12 training images"):
    data.check_batch_fits("stacked_mnist", split, 4)  # three images per example
  assert data.is_points("ring8") and not data.is_points("mnist")
  points = data.load("ring8", "train")
  data.check_batch_fits("ring8", points, 512)  # fresh points every batch: any batch fits
  np.testing.assert_array_equal(data.reference_points("ring8"), points.image)


def _nothing_set(monkeypatch, home):
  """No config.data_dir, no $TFDS_DATA_DIR, and TFDS's default directory empty."""
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(home))


def test_missing_mnist_falls_back_to_bundled_sample(tmp_path, monkeypatch, capsys):
  _nothing_set(monkeypatch, tmp_path)
  data._warn_once.cache_clear()  # a warning said earlier in this process
  start = time.monotonic()
  split = data.load("mnist", "train")
  assert time.monotonic() - start < 30
  assert split.image.shape == (5000, 28, 28, 1) and split.image.dtype == np.uint8
  assert np.bincount(split.label).tolist() == [500] * 10
  # Shuffled once, not sorted by digit: a prefix holds every digit in about equal numbers.
  assert np.bincount(split.label[:1000], minlength=10).min() >= 70
  assert 0 < split.image.mean() < 255
  assert "5,000-image MNIST sample" in capsys.readouterr().err
  data.load("mnist", "test")
  assert "MNIST sample" not in capsys.readouterr().err  # said once


@pytest.mark.parametrize("named_by", ["config", "environment"])
def test_mnist_missing_from_a_named_data_dir_is_an_error(tmp_path, monkeypatch, named_by):
  """A data_dir the user named but got wrong is a mistake to report, not a reason to train
  on the 5,000-image sample (only a user who set nothing gets that)."""
  _nothing_set(monkeypatch, tmp_path)
  wrong = str(tmp_path / "wrong")
  if named_by == "environment":
    monkeypatch.setenv("TFDS_DATA_DIR", wrong)
  with pytest.raises(data.DatasetNotFoundError, match=rf"'mnist' not found in data_dir '{wrong}'"):
    data.load("mnist", "train", wrong if named_by == "config" else None)


def test_missing_other_dataset_fails_fast_with_a_clear_message(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError, match=rf"'cifar10'.*{tmp_path}"):
    data.load("cifar10", "train", str(tmp_path))
  assert time.monotonic() - start < 5


@pytest.mark.tfds("mnist")
def test_reads_the_prepared_tfds_mnist_then_its_cached_copy(tmp_path, monkeypatch, capfd):
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path))  # an empty cache: TensorFlow reads
  split = data.load("mnist", "test", SHARED)
  # The reader shows its progress, and none of TensorFlow's start-up lines.
  err = capfd.readouterr().err
  assert "reading mnist:test" in err and "10000/10000" in err
  assert "oneDNN" not in err and "absl::InitializeLog" not in err
  assert split.image.shape == (10000, 28, 28, 1)
  assert np.bincount(split.label).sum() == 10000
  assert len(list((tmp_path / "data").glob("mnist-test-*.npz"))) == 1
  monkeypatch.setattr(data, "_read_split", None)  # a second read would fail
  again = data.load("mnist", "test", SHARED)
  np.testing.assert_array_equal(again.image, split.image)
  np.testing.assert_array_equal(again.label, split.label)
  assert again.source == split.source


def test_the_split_cache_follows_the_dataset_files(tmp_path, monkeypatch, capsys):
  files = tmp_path / "data_dir" / "fake" / "1.0.0"
  files.mkdir(parents=True)
  (files / "fake-train.tfrecord-00000-of-00001").write_bytes(b"x" * 10)
  reads = []

  def read(name, split, root):
    reads.append(split)
    return np.full((2, 1, 1, 1), len(reads), np.uint8), np.arange(2, dtype=np.int32)

  monkeypatch.setattr(data, "_read_split", read)
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  root = str(tmp_path / "data_dir")
  first = data.load("fake", "train", root)
  assert data.load("fake", "train", root).image.tolist() == first.image.tolist()
  assert reads == ["train"]  # the second load came from the cache
  data.load("fake", "train[:50%]", root)
  assert reads == ["train", "train[:50%]"]  # another split is another entry
  record = files / "fake-train.tfrecord-00000-of-00001"
  record.write_bytes(b"y" * 11)  # re-prepared: another size
  assert data.load("fake", "train", root).image.max() == 3 and len(reads) == 3
  os.utime(record, ns=(1, 1))  # the same files, copied or provisioned again: still cached
  assert data.load("fake", "train", root).image.max() == 3 and len(reads) == 3
  record.write_bytes(b"z" * 11)  # the same size and modification time, other content
  os.utime(record, ns=(1, 1))
  assert data.load("fake", "train", root).image.max() == 4
  (files / "dataset_info.json").write_text('{"version": 1}')
  assert data.load("fake", "train", root).image.max() == 5
  os.utime(files / "dataset_info.json", ns=(1, 1))  # mtime and size kept, content changed
  (files / "dataset_info.json").write_text('{"version": 2}')
  os.utime(files / "dataset_info.json", ns=(1, 1))
  assert data.load("fake", "train", root).image.max() == 6
  assert data.load("fake", "train", root).image.max() == 6  # and cached again
  # A damaged entry is read again; an unusable cache directory only warns; a
  # dataset whose files cannot all be looked at is read without the cache.
  for entry in (tmp_path / "cache" / "data").glob("fake-train-*.npz"):
    entry.write_bytes(b"not a zip file")
  assert data.load("fake", "train", root).image.max() == 7
  monkeypatch.setenv("JAXGAN_CACHE", str(record))
  assert data.load("fake", "train", root).image.max() == 8
  assert "could not cache fake:train" in capsys.readouterr().err
  monkeypatch.setenv("JAXGAN_CACHE", str(tmp_path / "cache"))
  (files / "dangling").symlink_to(tmp_path / "nowhere")
  assert [data.load("fake", "train", root).image.max() for _ in range(2)] == [9, 10]
  assert not list((tmp_path / "cache" / "data").glob("*.tmp"))


def test_a_killed_writers_partial_file_is_removed_once_stale(tmp_path):
  path = tmp_path / "entry.npz"
  stale, live = tmp_path / "entry.npz.killed.tmp", tmp_path / "entry.npz.writing.tmp"
  other = tmp_path / "other.npz.killed.tmp"  # another entry's
  for partial in (stale, live, other):
    partial.write_bytes(b"half an npz")
  old = time.time() - utils.STALE_PARTIAL_SECONDS - 60
  os.utime(stale, (old, old))
  utils.save_npz(str(path), x=np.arange(3))
  assert not stale.exists() and live.exists() and other.exists()
  # The usual case: the partial was new when the entry was written, and is stale by a later read.
  os.utime(other, (old, old))
  assert utils.load_npz(str(path), ("x",))["x"].tolist() == [0, 1, 2]
  assert not other.exists() and live.exists()


def test_stacked_mnist_batches_stack_three_digits():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, (60,), dtype=np.int32)
  d = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  perm = data.epoch_permutation(jax.random.PRNGKey(0), jnp.int32(0), 60)
  batch_fn = data.batch_fn("stacked_mnist")
  _, batch = batch_fn(d, perm, jax.random.PRNGKey(0), jnp.int32(1), 4, None)
  assert batch["image"].shape == (4, 28, 28, 3)
  index = np.asarray(perm)[12:24].reshape(4, 3)  # batch 1 of 4 examples x 3 images
  for j in range(3):
    np.testing.assert_allclose(
        batch["image"][..., j], images[index[:, j], ..., 0] * (2 / 255) - 1, atol=1e-6
    )
  np.testing.assert_array_equal(batch["label"], (labels[index] * [1, 10, 100]).sum(axis=1))
