"""Semi-supervised methods: label subsets, weight norm, Improved-GAN's losses and step."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import (
    cifar10_shared_trunk,
    cifar10_triple_gan,
    mnist,
    mnist_improved_gan,
    mnist_triple_gan,
)
from gan import data, methods, models, runs, semi
from gan import state as state_lib
from gan import step as step_lib
from gan.evaluation import views
from gan.models import dropout
from gan.models.weight_norm import GaussianNoise, WNDense
from gan.parallel import replicate, unreplicate
from gan.semi import improved_gan, labels, triple_gan
from gan.utils import ConfigError


def _labels(n=1000, classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n).astype(np.int32)


def test_label_subset_is_balanced_seeded_and_disjoint_from_nothing_else():
  y = _labels()
  a = labels.choose(y, 10, seed=1)
  assert len(a) == 100 and len(np.unique(a)) == 100
  np.testing.assert_array_equal(np.bincount(y[a], minlength=10), np.full(10, 10))
  np.testing.assert_array_equal(a, labels.choose(y, 10, seed=1))  # same seed, same subset
  assert len(np.intersect1d(a, labels.choose(y, 10, seed=2))) < 50  # another seed, another
  with pytest.raises(ConfigError):
    labels.choose(np.zeros(5, np.int32), 10, seed=0)


def test_label_subset_is_saved_and_checked_on_resume(tmp_path):
  y = _labels()
  first = labels.load_or_choose(str(tmp_path), y, 5, seed=3, source="train")
  saved = json.loads((tmp_path / labels.FILENAME).read_text())
  assert saved["seed"] == 3 and saved["labels"] == y[first].tolist()
  np.testing.assert_array_equal(labels.load_or_choose(str(tmp_path), y, 5, 3, "train"), first)
  with pytest.raises(ConfigError, match="new workdir"):
    labels.load_or_choose(str(tmp_path), y, 5, seed=4, source="train")
  with pytest.raises(ConfigError, match="does not match"):
    labels.load_or_choose(str(tmp_path), (y + 1) % 10, 5, seed=3, source="train")
  other = tmp_path / "other"
  labels.load_or_choose(str(other), y, 5, seed=3, source="train", write=False)
  assert not other.exists()


def test_labelled_data_is_the_subset_tiled_to_whole_batches(tmp_path):
  config = mnist_improved_gan.get_config("smoke")
  config.semi.labels_per_class, config.batch_size = 2, 16
  config.semi.label_seed, config.seed = 5, 3  # the subset's seed, apart from the run's
  y = _labels(250)
  images = np.arange(250, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  split = data.Split(images, y, "test split")
  arrays = semi.labelled_data(config, split, str(tmp_path), write=True)
  subset = labels.choose(y, 2, seed=5)
  # 20 labels, batch 16: tiled to lcm = 80, each labelled example 4 times, with its label.
  assert len(arrays["labelled_label"]) == 80
  index = arrays["labelled_image"][:, 0, 0, 0].astype(np.int64)
  np.testing.assert_array_equal(np.sort(np.unique(index)), subset)
  np.testing.assert_array_equal(np.bincount(index, minlength=250)[subset], np.full(20, 4))
  np.testing.assert_array_equal(arrays["labelled_label"], y[index])
  # label_seed fixes the subset whatever the run's seed.
  config.semi.label_seed, config.seed = 7, 8
  other = semi.labelled_data(config, split, str(tmp_path / "other"), write=True)
  np.testing.assert_array_equal(
      np.unique(other["labelled_image"][:, 0, 0, 0]), labels.choose(y, 2, seed=7)
  )
  with pytest.raises(ConfigError, match="from seed 5"):  # the first workdir keeps its subset
    semi.labelled_data(config, split, str(tmp_path), write=True)
  config.semi.label_seed, config.semi.labels_per_class = 5, 3
  with pytest.raises(ConfigError, match="2 labels per class"):
    semi.labelled_data(config, split, str(tmp_path), write=True)
  # By default every training seed gets label seed 0's subset (the one seed 0 always had).
  config = mnist_improved_gan.get_config("smoke")
  config.seed = 4
  default = semi.labelled_data(config, split, str(tmp_path / "default"), write=True)
  np.testing.assert_array_equal(
      np.unique(default["labelled_image"][:, 0, 0, 0]), labels.choose(y, 2, seed=0)
  )


def test_method_settings_of_the_experiments():
  """Triple-GAN's alpha = 1/2 (the paper's), and Improved-GAN's D has exactly K logits."""
  for experiment in (mnist_triple_gan, cifar10_triple_gan, cifar10_shared_trunk):
    assert experiment.get_config().semi.alpha == 0.5
  config = mnist_improved_gan.get_config("smoke")
  G, D = models.build(config.model, axis_name=None)
  x = jnp.zeros((3, 28, 28, 1))
  variables = D.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}, x, False)
  assert D.apply(variables, x, False).shape == (3, config.semi.num_classes)  # no fake logit
  module, _ = improved_gan.classifier(D, {"c_ema": variables["params"]})
  assert module is D


@pytest.mark.parametrize(
    "experiment, variant, epoch, r_p_epoch, rates",
    [
        (
            mnist_triple_gan,
            "paper",
            600,
            300,
            {"g": (1e-3, 0.995), "d": (1e-3, 0.995), "c": (1e-3, 0.995)},
        ),
        (mnist_triple_gan, "paper,reference", 600, 300, {"c": (1e-3, 0.995)}),
        (cifar10_triple_gan, "", 500, 200, {"g": (3e-4, 0.995), "c": (3e-3, 0.99)}),
    ],
)
def test_triple_gan_schedules_count_epochs_from_one_as_the_authors_code(
    experiment, variant, epoch, r_p_epoch, rates
):
  """The authors' loops run epochs 1, 2, ...: update t (from 0) is in epoch t // epoch + 1.

  R_P is on from epoch r_p_epoch; the rate is annealed after each epoch from epoch 300 on,
  so epoch 301 is the first with a lowered rate.
  """
  config = experiment.get_config(variant)
  assert config.semi.pseudo_start_step == (r_p_epoch - 1) * epoch
  for player, (lr, factor) in rates.items():
    rate = state_lib.learning_rate(config.optim[player], config.num_steps)
    first_of = lambda e: (e - 1) * epoch  # noqa: E731  (the first update of epoch e)
    np.testing.assert_allclose(
        [rate(first_of(300)), rate(first_of(301) - 1), rate(first_of(301)), rate(first_of(302))],
        [lr, lr, lr * factor, lr * factor**2],
        rtol=1e-6,
    )


def test_paper_2016_scores_the_raw_d_and_reports_it(tmp_path):
  """Improved-GAN as of the paper's date: 1e-3, linear decay over the last 100 epochs, raw D."""
  config = mnist_improved_gan.get_config("paper_2016")
  assert config.num_steps == 180_000
  for optim in (config.optim.g, config.optim.d):
    assert (optim.lr, optim.decay, optim.decay_start) == (1e-3, "linear", 120_000)
  assert (config.evals.classifier.params, config.evals.classifier_ema.params) == ("raw", "ema")
  # The two views: D's EMA and D itself.
  method, nets = methods.METHODS["improved_gan"], methods.Networks(None, "D")
  state = {"c_ema": {"w": 1.0}, "d": {"params": {"w": 2.0}}}
  assert method.classifier(nets, state)[1]["params"] == {"w": 1.0}
  assert method.classifier(nets, state, average=False)[1]["params"] == {"w": 2.0}
  # eval.json's test error is the "classifier" evaluator's (here the raw D's).
  labels.load_or_choose(str(tmp_path), _labels(200), 2, 0, "test")
  results = {
      "classifier_ema": views.Result({"test_error": 0.25}, {}),
      "classifier": views.Result({"test_error": 0.5}, {}),
  }
  assert semi.eval_extra(str(tmp_path), results)["test_error"] == 0.5


def test_weight_norm_data_dependent_init_standardises_the_first_batch():
  x = jax.random.normal(jax.random.PRNGKey(0), (256, 20)) * 3.0 + 1.0
  layer = WNDense(7, init_scale=1.0)
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  y = layer.apply({"params": params}, x)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(0), 1.0, rtol=1e-4)
  # The weight is g * v / ||v||: rescaling v changes nothing.
  scaled = {**params, "kernel": params["kernel"] * 5.0}
  np.testing.assert_allclose(layer.apply({"params": scaled}, x), y, rtol=1e-5, atol=1e-5)


def test_gaussian_noise_is_standard_normal_and_off_in_inference():
  noise = GaussianNoise(0.5)
  x = jnp.zeros((2000, 50))
  y = noise.apply({}, x, train=True, rngs={"noise": jax.random.PRNGKey(0)})
  assert abs(float(y.mean())) < 0.01 and abs(float(y.std()) - 0.5) < 0.01
  np.testing.assert_array_equal(noise.apply({}, x, train=False), x)
  z = np.asarray(dropout.normal(jnp.uint32(3), (500, 200)))
  assert abs(np.mean(z**4) - 3.0) < 0.1  # Gaussian kurtosis
  # The extreme hash values give finite, symmetric draws in the tails.
  extremes = np.asarray(
      dropout.bits_to_normal(jnp.array([0, 511, 2**32 - 512, 2**32 - 1], jnp.uint32))
  )
  assert np.all(np.isfinite(extremes))
  np.testing.assert_allclose(extremes, [-5.3, -5.3, 5.3, 5.3], atol=0.1)
  np.testing.assert_allclose(extremes[:2], -extremes[2:][::-1], rtol=1e-6)


def test_improved_gan_losses_against_hand_computed_values():
  logits = jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
  labels_ = jnp.array([1, 0])
  # Cross-entropy by hand: -log softmax(l)_y.
  ce = [np.log(np.exp(1) + np.exp(2) + 1) - 2.0, np.log(2 + np.exp(3)) - 0.0]
  np.testing.assert_allclose(improved_gan.supervised_loss(logits, labels_), np.mean(ce), rtol=1e-6)
  # D(x) = Z / (Z + 1), Z = sum exp(l): the unsupervised loss is
  # -1/2 E log D(x_real) - 1/2 E log(1 - D(x_fake)).
  real, fake = logits, jnp.array([[-1.0, -2.0, -3.0], [0.5, 0.0, -0.5]])
  z_real = np.exp(np.asarray(real)).sum(1)
  z_fake = np.exp(np.asarray(fake)).sum(1)
  expected = -0.5 * np.mean(np.log(z_real / (z_real + 1))) - 0.5 * np.mean(
      np.log(1 - z_fake / (z_fake + 1))
  )
  np.testing.assert_allclose(improved_gan.unsupervised_loss(real, fake), expected, rtol=1e-6)
  # Feature matching: mean over features of the squared difference of batch means.
  f_real = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # means (2, 3)
  f_fake = jnp.array([[0.0, 0.0], [2.0, 0.0]])  # means (1, 0)
  np.testing.assert_allclose(improved_gan.feature_matching_loss(f_real, f_fake), (1 + 9) / 2)


def test_triple_gan_losses_against_hand_computed_values():
  sp = lambda x: np.log1p(np.exp(x))  # noqa: E731  softplus: -log sigmoid(-x)
  real, classified, generated = jnp.array([2.0, -1.0]), jnp.array([0.5]), jnp.array([-3.0, 1.0])
  # -E log D(real) - alpha E log(1 - D(classified)) - (1 - alpha) E log(1 - D(generated))
  expected = np.mean(sp(-np.array([2.0, -1.0]))) + 0.25 * sp(0.5)
  expected += 0.75 * np.mean(sp(np.array([-3.0, 1.0])))
  np.testing.assert_allclose(
      triple_gan.discriminator_loss(real, classified, generated, 0.25), expected, rtol=1e-6
  )
  # The score-function surrogate: alpha * mean((log(1 - D) - baseline) * log C(y | x)).
  logits = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  sampled, d_logits = jnp.array([0, 1]), jnp.array([-2.0, 2.0])  # D rejects pair 0, accepts 1
  cost = -sp(np.array([-2.0, 2.0]))
  log_prob = np.array([np.log(0.5), -np.log1p(np.e)])
  expected = 0.5 * np.mean((cost - cost.mean()) * log_prob)
  np.testing.assert_allclose(
      triple_gan.classifier_adversarial_loss(logits, sampled, d_logits, 0.5), expected, rtol=1e-6
  )
  grad = jax.grad(lambda x: triple_gan.classifier_adversarial_loss(x, sampled, d_logits, 0.5))(
      logits
  )
  # Descent lowers C(0 | x_0) (the pair D rejected) and raises C(1 | x_1) (the one it accepted).
  assert grad[0, 0] > 0 and grad[1, 1] < 0
  np.testing.assert_allclose(
      triple_gan.cross_entropy(logits, jnp.array([1, 0])),
      np.mean([np.log(2.0), np.log1p(np.e) - 1.0]),
      rtol=1e-6,
  )
  # Entropy: example 0 is uniform (log 2); example 1 has p = (e, 1) / (e + 1).
  p1 = np.array([np.e, 1.0]) / (np.e + 1.0)
  np.testing.assert_allclose(
      triple_gan.entropy(logits), np.mean([np.log(2.0), -np.sum(p1 * np.log(p1))]), rtol=1e-6
  )
  # Balance: -mean_k log(mean_i p_ik), smallest (log 2) for a balanced batch.
  mean = (np.array([0.5, 0.5]) + p1) / 2
  np.testing.assert_allclose(triple_gan.balance(logits), -np.mean(np.log(mean)), rtol=1e-5)
  np.testing.assert_allclose(triple_gan.balance(jnp.array([[5.0, 0], [0, 5.0]])), np.log(2.0))


def test_classifier_adversarial_gradient_is_that_of_the_papers_term():
  """With labels drawn from C, the surrogate's gradient estimates the gradient of the paper's
  alpha E_{y ~ C(.|x)}[log(1 - D(x, y))] with respect to C's logits, baseline and all."""
  logits = jnp.array([0.4, -0.3, 1.1])  # C(. | x) for one image x, K = 3
  d_logits = jnp.array([1.5, -0.5, 0.2])  # D's logit for (x, y), y = 0, 1, 2
  alpha, n = 0.5, 200_000

  def term(c_logits):  # the expectation itself, exactly
    return alpha * jnp.sum(jax.nn.softmax(c_logits) * -jax.nn.softplus(d_logits))

  sampled = jax.random.categorical(jax.random.PRNGKey(0), logits, shape=(n,))

  def surrogate(c_logits):  # the same image n times, each with its own drawn label
    batch = jnp.broadcast_to(c_logits, (n, 3))
    return triple_gan.classifier_adversarial_loss(batch, sampled, d_logits[sampled], alpha)

  exact, estimate = jax.grad(term)(logits), jax.grad(surrogate)(logits)
  # The estimate's standard error is about 2e-4 here (8 seeds); the gradient's entries ~0.1.
  np.testing.assert_allclose(estimate, exact, atol=1.5e-3)
  assert np.max(np.abs(exact)) > 0.05


def _setup(config, n=200):
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  C = models.build_classifier(config.model, axis_name=step_lib.AXIS)
  method = methods.get(config)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  y = rng.integers(0, 10, n).astype(np.int32)
  subset = labels.choose(y, config.semi.labels_per_class, seed=0)
  extra = {"labelled_image": images[subset], "labelled_label": y[subset]}
  split = data.Split(images, y, "test")
  state = method.init(config, methods.Networks(G, D, C), split, extra)
  return G, D, C, split.arrays() | extra, state


def _run(config, num_devices, num_steps=3):
  G, D, C, data, state = _setup(config)
  devices = jax.devices()[:num_devices]
  method = methods.get(config)
  fn = method.make_step(method.step_config(config), methods.Networks(G, D, C))
  p_step = step_lib.pmap_step(fn, devices)
  p_state, p_data = replicate(state, devices), replicate(data, devices)
  history = []
  for _ in range(num_steps):
    p_state, metrics = p_step(p_state, p_data)
    history.append(jax.device_get(unreplicate(metrics)))
  return state, jax.device_get(unreplicate(p_state)), history


@pytest.mark.parametrize(
    "experiment, num_devices",
    [(mnist_improved_gan, 2), (mnist_improved_gan, 4), (mnist_triple_gan, 2)],
)
def test_semi_supervised_step_is_the_same_on_several_devices(experiment, num_devices):
  config = experiment.get_config("smoke")
  config.semi.pseudo_start_step = 1  # all of Triple-GAN's terms active by the second step
  init, single, single_metrics = _run(config, 1)
  _, multi, multi_metrics = _run(config, num_devices)
  for name in multi.players:  # every player and the classifier's EMA moved, identically
    before = jax.tree_util.tree_leaves_with_path(getattr(init, name).params)
    after = jax.tree.leaves(getattr(multi, name).params)
    unchanged = {
        jax.tree_util.keystr(path)
        for (path, a), b in zip(before, after, strict=True)
        if np.allclose(a, b)
    }
    # Only the weight-norm scales D's hidden layers keep on purpose (train_scale=False).
    hidden_scales = {f"['WNDense_{i}']['scale']" for i in range(len(config.model.d.widths))}
    assert unchanged <= (hidden_scales if name == "d" else set()), (name, unchanged)
    chex.assert_trees_all_close(
        getattr(single, name).params, getattr(multi, name).params, rtol=1e-4, atol=2e-5
    )
  chex.assert_trees_all_close(single.c_ema, multi.c_ema, rtol=1e-4, atol=2e-5)
  chex.assert_trees_all_close(single.g.batch_stats, multi.g.batch_stats, rtol=1e-4, atol=2e-5)
  np.testing.assert_array_equal(single.labelled_perm, multi.labelled_perm)
  assert not np.allclose(jax.tree.leaves(init.c_ema)[0], jax.tree.leaves(multi.c_ema)[0])
  for s, m in zip(single_metrics, multi_metrics, strict=True):
    chex.assert_trees_all_close(s, m, rtol=1e-4, atol=1e-5)
  if experiment is mnist_triple_gan:
    chex.assert_trees_all_close(single.c.batch_stats, multi.c.batch_stats, rtol=1e-4, atol=2e-5)
    assert {"c/loss_sup", "c/loss_adv", "c/loss_pseudo", "c/update_ratio"} <= set(m)
    # R_P is off before pseudo_start_step (1 here), then weighted alpha_p.
    assert [h["c/pseudo_weight"] for h in multi_metrics] == [0.0] + [config.semi.alpha_p] * 2
    assert all(h[f"{p}/grad_norm"] > 0 for h in multi_metrics for p in ("c", "d", "g"))
  else:
    assert {"d/loss_sup", "d/loss_unsup", "d/train_acc"} <= set(m)
  assert {"g/loss", "d/update_ratio", "health/finite"} <= set(m)


@pytest.mark.parametrize("experiment", [mnist_improved_gan, mnist_triple_gan])
def test_each_evaluation_reuses_the_compiled_views(experiment):
  # The loop builds new views (and new networks, for a restored run) at every
  # evaluation; equal networks must not compile their inference again.
  from gan.evaluation import views  # noqa: PLC0415

  config = experiment.get_config("smoke")
  G, D, C, data, state = _setup(config)
  x = data["image"][:8]
  views._infer.clear_cache()
  method = methods.get(config)
  found = runs.make_views(config, method, methods.Networks(G, D, C), state)
  first = found["classifier"].logits(x), found["generator"].outputs(8, seed=0)
  assert views._infer._cache_size() == 2  # one for G, one for the classifier
  moved = state.replace(c_ema=jax.tree.map(lambda p: p + 0.01, state.c_ema))
  G2, D2 = models.build(config.model, axis_name=step_lib.AXIS)
  C2 = models.build_classifier(config.model, axis_name=step_lib.AXIS)
  again = runs.make_views(config, method, methods.Networks(G2, D2, C2), moved)
  second = again["classifier"].logits(x), again["generator"].outputs(8, seed=0)
  assert views._infer._cache_size() == 2  # nothing compiled again
  assert not np.allclose(first[0], second[0])  # the new view runs its own parameters
  np.testing.assert_array_equal(first[1], second[1])


def test_triple_gan_pretraining_trains_the_classifier_alone():
  config = mnist_triple_gan.get_config("smoke")
  config.semi.pretrain.update(steps=30, unlabelled_batch=50, lr=3e-2)
  G, D, C, data, state = _setup(config)
  # Images whose brightness tells their class, so a few steps can learn it.
  noise = np.random.default_rng(1).integers(0, 20, data["image"].shape)
  data["image"] = (data["label"][:, None, None, None] * 25 + noise).astype(np.uint8)
  subset = labels.choose(data["label"], config.semi.labels_per_class, seed=0)
  data["labelled_image"] = data["image"][subset]
  lines = []
  new, summary = triple_gan.pretrain(config, C, state, data, lines.append)
  again, _ = triple_gan.pretrain(config, C, state, data, lambda _: None)
  chex.assert_trees_all_equal(new.c.params, again.c.params)  # seeded: the same twice
  # G, D, the step, the data orders and C's own optimizer state are untouched.
  for name in ("g", "d", "g_ema", "step", "data_perm", "labelled_perm"):
    chex.assert_trees_all_equal(getattr(new, name), getattr(state, name))
  chex.assert_trees_all_equal(new.c.opt_state, state.c.opt_state)
  # C, its running statistics and its EMA moved; the EMA lags the parameters.
  for tree in ("params", "batch_stats"):
    old_leaf, new_leaf = (jax.tree.leaves(getattr(s.c, tree))[0] for s in (state, new))
    assert not np.allclose(old_leaf, new_leaf)
  ema, params, init = (jax.tree.leaves(t)[-1] for t in (new.c_ema, new.c.params, state.c_ema))
  assert not np.allclose(ema, params) and not np.allclose(ema, init)
  # It learned: the labelled loss fell from ~ln 10, and the EMA classifier (inference mode)
  # labels all 200 images better than the initial one (0.145 -> 0.33 when written).
  assert summary["steps"] == 30 and summary["supervised"] < 1.7, summary
  x = data["image"].astype(np.float32) * (2.0 / 255.0) - 1.0

  def accuracy(s):
    variables = {"params": s.c_ema, "batch_stats": s.c.batch_stats}
    logits = C.clone(axis_name=None).apply(variables, x, train=False)
    return np.mean(np.argmax(logits, -1) == data["label"])

  assert accuracy(new) > accuracy(state) + 0.1
  assert len(lines) == 10 and lines[-1].startswith("pre-training C: step 30/30")
  off, nothing = triple_gan.pretrain(mnist_triple_gan.get_config("smoke"), C, state, data)
  assert off is state and nothing == {}


def test_confusions_count_errors_per_class_and_rank_the_pairs():
  from gan.evaluation import test_error  # noqa: PLC0415

  labels_ = np.array([7, 7, 7, 7, 2, 2, 1, 1, 0])
  predicted = np.array([2, 2, 2, 7, 2, 7, 1, 0, 0])
  found = test_error.confusions(labels_, predicted, num_classes=10, top=2)
  assert found["errors_per_class"] == [0, 1, 1, 0, 0, 0, 0, 3, 0, 0]
  assert found["top_confusions"] == [
      {"true": 7, "predicted": 2, "count": 3},
      {"true": 1, "predicted": 0, "count": 1},
  ]
  assert test_error.confusions(labels_, labels_, 10)["top_confusions"] == []


def test_unknown_method_is_a_config_error():
  config = mnist_improved_gan.get_config("smoke")
  config.method = "quadruple_gan"
  with pytest.raises(ConfigError, match="unknown method"):
    methods.get(config)


def test_improved_gan_run_reports_test_error_and_resumes(tmp_path):
  from gan import train  # noqa: PLC0415  (loads data)

  config = mnist_improved_gan.get_config("smoke")
  config.num_steps, config.checkpoint_every = 10, 5
  config.evals.classifier.every = 5
  train.train_and_evaluate(config, str(tmp_path))
  result = json.loads((tmp_path / "eval.json").read_text())
  scores = result["classifier"]
  assert result["step"] == 10 and result["test_error"] == scores["test_error"]
  assert scores["test_errors"] == round(scores["test_error"] * scores["protocol"]["num_examples"])
  details = scores["details"]  # where the errors are: per true class, most frequent confusions
  assert len(details["errors_per_class"]) == 10
  assert sum(details["errors_per_class"]) == scores["test_errors"]
  counts = [pair["count"] for pair in details["top_confusions"]]
  assert counts == sorted(counts, reverse=True) and 0 < len(counts) <= 5
  assert all(pair["true"] != pair["predicted"] for pair in details["top_confusions"])
  expected = {"seed": 0, "per_class": 2, "num_labelled": 20, "file": "labelled.json"}
  assert result["labels"] == expected
  assert result["classifier"]["protocol"]["num_examples"] > 0
  assert (tmp_path / "labelled.json").exists()
  config.num_steps = 15
  final = train.train_and_evaluate(config, str(tmp_path))
  assert int(final.step) == 15 and final.c_ema is not None
  records = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [5, 10, 15]


def test_evaluate_cli_reproduces_the_runs_test_error(tmp_path):
  from gan import runs, train  # noqa: PLC0415  (loads data)

  config = mnist_triple_gan.get_config("smoke")
  config.num_steps = 6
  config.semi.pretrain.update(steps=2, unlabelled_batch=50)  # C alone first, once
  train.train_and_evaluate(config, str(tmp_path))
  assert json.loads((tmp_path / "pretrain.json").read_text())["steps"] == 2
  during = json.loads((tmp_path / "eval.json").read_text())
  after = runs.evaluate(str(tmp_path))
  assert after["test_error"] == during["test_error"] and after["labels"] == during["labels"]
  # G(z, y) cycles its labels, so the sample grid has one column per class: 10 x (28 + 1px) + 1.
  grids = sorted((tmp_path / "samples").glob("*.png"))
  assert grids and np.asarray(Image.open(grids[-1])).shape[1] == 10 * 29 + 1
  # The view it scored is C's EMA with C's running statistics, not the raw parameters.
  state, config = runs._restore(str(tmp_path), "latest")
  method = methods.get(config)
  found = runs.make_views(config, method, methods.build_networks(config, None), state)
  C = models.build_classifier(config.model, axis_name=None)
  x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  scaled = x.astype(np.float32) * (2.0 / 255.0) - 1.0
  stats = state["c"]["batch_stats"]
  ema = C.apply({"params": state["c_ema"], "batch_stats": stats}, scaled, train=False)
  raw = C.apply({"params": state["c"]["params"], "batch_stats": stats}, scaled, train=False)
  np.testing.assert_allclose(found["classifier"].logits(x), ema, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(found["classifier_raw"].logits(x), raw, rtol=1e-5, atol=1e-5)
  assert not np.allclose(ema, raw, atol=1e-4)
  # A resumed run does not pre-train C again.
  written = (tmp_path / "pretrain.json").stat().st_mtime_ns
  config.num_steps = 7
  assert int(train.train_and_evaluate(config, str(tmp_path)).step) == 7
  assert (tmp_path / "pretrain.json").stat().st_mtime_ns == written


def test_a_rollback_before_the_first_checkpoint_keeps_the_pretrained_classifier(
    tmp_path, monkeypatch
):
  from gan import build, health, loop, recovery, train  # noqa: PLC0415  (loads data)

  config = mnist_triple_gan.get_config("smoke")
  config.num_steps, config.log_every, config.checkpoint_every = 4, 1, 100
  config.semi.pretrain.update(steps=2, unlabelled_batch=50)
  # Every loss counts as exploded: the first divergence (two log records) rolls back,
  # to the step-0 checkpoint pre-training wrote; the second stops the run.
  config.health.divergence.max_loss = 1e-9
  config.health.max_rollbacks = 1
  seen = {}
  pretrain, rollback = build.Run.pretrain, recovery.HealthMonitor.rollback

  def spy_pretrain(run, log):
    seen["initial"] = jax.device_get(run.state.c.params)
    pretrain(run, log)
    seen["pretrained"] = jax.device_get(run.state.c.params)

  def spy_rollback(monitor, events):
    state = rollback(monitor, events)
    seen["rolled_back"] = (int(state.step), jax.device_get(state.c.params))
    return state

  monkeypatch.setattr(build.Run, "pretrain", spy_pretrain)
  monkeypatch.setattr(recovery.HealthMonitor, "rollback", spy_rollback)
  with pytest.raises(loop.RunStoppedError):
    train.train_and_evaluate(config, str(tmp_path))
  assert [e["action"] for e in health.read_events(str(tmp_path))] == ["rollback", "stop"]
  step, params = seen["rolled_back"]
  assert step == 0
  chex.assert_trees_all_equal(params, seen["pretrained"])  # not C as initialised
  assert not np.allclose(jax.tree.leaves(params)[0], jax.tree.leaves(seen["initial"])[0])


def test_seed_runner_reports_mean_and_std_over_training_seeds(tmp_path):
  from gan import seeds  # noqa: PLC0415

  config = mnist_improved_gan.get_config("smoke")
  config.num_steps = 4
  summary = seeds.run_seeds(config, str(tmp_path), [0, 1], "test_error")
  values = [json.loads((tmp_path / f"seed_{s}" / "eval.json").read_text()) for s in (0, 1)]
  errors = [v["test_error"] for v in values]
  assert summary["values"] == {"0": errors[0], "1": errors[1]} and summary["n"] == 2
  np.testing.assert_allclose(summary["mean"], np.mean(errors))
  np.testing.assert_allclose(summary["median"], np.median(errors))
  np.testing.assert_allclose(summary["std"], np.std(errors, ddof=1))
  assert summary["varied"] == "seed"
  assert json.loads((tmp_path / "seeds.json").read_text()) == summary
  assert set(summary["wall_time_s"]) == {"0", "1"}
  assert all(t is not None and 0 <= t < 600 for t in summary["wall_time_s"].values())
  subsets = [json.loads((tmp_path / f"seed_{s}" / "labelled.json").read_text()) for s in (0, 1)]
  assert subsets[0]["indices"] == subsets[1]["indices"]  # two trajectories, one labelled subset
  assert runs.read_metric({"a": {"b": 2.0}}, "a/b") == 2.0
  with pytest.raises(ConfigError):
    runs.read_metric(values[0], "nothing")


def test_seed_runner_varies_the_labelled_subset_with_the_model_seed_fixed(tmp_path, monkeypatch):
  """--vary=label_seed: one run per labelled subset, config.seed as configured."""
  from gan import seeds, train  # noqa: PLC0415

  trained = []

  def fake_train(config, workdir):  # records what each run was given; scores it by its subset
    trained.append((os.path.basename(workdir), config.seed, config.semi.label_seed))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump({"test_error": 0.01 * (1 + config.semi.label_seed**2)}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for record in (
          {"step": 1, "start_time": 10.0, "wall_time": 12.0},
          {"step": 2, "wall_time": 15.0},
      ):
        f.write(json.dumps(record) + "\n")

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  config = mnist_triple_gan.get_config("reference")
  config.seed = 7
  summary = seeds.run_seeds(config, str(tmp_path), [0, 1, 3], "test_error", vary="label_seed")
  assert trained == [("label_seed_0", 7, 0), ("label_seed_1", 7, 1), ("label_seed_3", 7, 3)]
  assert summary["varied"] == "semi.label_seed"
  assert summary["values"] == {"0": 0.01, "1": 0.02, "3": 0.1}
  np.testing.assert_allclose([summary["median"], summary["mean"]], [0.02, 0.13 / 3])
  np.testing.assert_allclose(summary["std"], np.std([0.01, 0.02, 0.1], ddof=1))
  assert summary["wall_time_s"] == {"0": 5.0, "1": 5.0, "3": 5.0}
  assert json.loads((tmp_path / "seeds.json").read_text()) == summary
  with pytest.raises(ConfigError, match="semi-supervised"):
    seeds.run_seeds(
        mnist.get_config("smoke"), str(tmp_path / "gan"), [0], "test_error", vary="label_seed"
    )


def test_wall_time_leaves_out_the_pause_before_a_resume(tmp_path):
  from gan import seeds  # noqa: PLC0415

  records = [
      # First process: writer opened at t=100, records until t=160 (step 300).
      {"step": 100, "start_time": 100.0, "wall_time": 120.0},
      {"step": 200, "wall_time": 140.0},
      {"step": 300, "wall_time": 160.0},
      # Resumed an hour later from the step-300 checkpoint: the step still advances.
      {"step": 400, "start_time": 3760.0, "wall_time": 3790.0},
      {"step": 500, "wall_time": 3800.0},
      # An older record format (no start_time) resumed from step 400: the step goes back.
      {"step": 450, "wall_time": 9000.0},
      {"step": 500, "wall_time": 9005.0},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert seeds.wall_time(str(tmp_path)) == (160 - 100) + (3800 - 3760) + (9005 - 9000)
