"""The semi-supervised steps put their loss terms together as the papers say.

tests/test_semi.py checks each loss function against hand-computed values, and
that a step is the same on one device and several. Here one whole step runs,
under pmap, with stand-in players simple enough that every loss it reports
can be written out independently in the test: which batch goes into which
term, with which weight (alpha != 1/2, unlabelled_weight != 1, so swapped
terms show), against the old or the new D. The gradients of those written-out
losses also fix each player's first update: with eps = 1 in Adam's
denominator, its first step moves each parameter by -lr g / (|g| + 1).

The stand-ins see an image only through its mean pixel m:
  G(z, y)   a constant image, tanh(level + 0.1 y) (y = 0 unconditional)
  D(x, y)   Triple-GAN's pair discriminator: w t + v[y]
  C(x)      Triple-GAN's classifier: logits u + B t
            where t = m, or with a shared trunk t = a m, `a` the trunk's one parameter
  D(x)      Improved-GAN's K-class discriminator: features f = (s m, m^2),
            logits f W + b
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.nn import log_softmax, softplus

from experiments import mnist_improved_gan, mnist_triple_gan
from gan import data as data_lib
from gan import methods, streams
from gan import step as step_lib
from gan.models import shared_trunk
from gan.parallel import replicate, unreplicate
from gan.semi import improved_gan, triple_gan

K = 10


def _constant(value):
  return nn.initializers.constant(np.asarray(value, np.float32))


def _mean_pixel(x):
  return jnp.mean(x, axis=(1, 2, 3))


class StandInG(nn.Module):
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z, train=True, y=None):
    level = self.param("level", _constant(0.2), ())
    calls = self.variable("batch_stats", "calls", jnp.zeros, ())  # G's state has batch stats
    if train:
      calls.value += 1
    shift = 0.0 if y is None else 0.1 * y
    value = jnp.tanh(level + shift + 0.0 * z[:, 0])
    return jnp.broadcast_to(value[:, None, None, None], (z.shape[0], 28, 28, 1))


class Trunk(nn.Module):

  @nn.compact
  def __call__(self, m):
    return self.param("a", _constant(1.3), ()) * m


def _trunk(module, x):
  m = _mean_pixel(x)
  return Trunk(name=shared_trunk.TRUNK)(m) if module.shared else m


class PairD(nn.Module):
  axis_name: str | None = None
  shared: bool = False

  @nn.compact
  def __call__(self, x, train=True, y=None):
    w = self.param("w", _constant(0.5), ())
    v = self.param("v", _constant(np.linspace(-0.5, 0.5, K)), (K,))
    return w * _trunk(self, x) + v[y]


class LinearC(nn.Module):
  axis_name: str | None = None
  shared: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    u = self.param("u", _constant([0.3, -0.2, 0.5, 0.1, -0.4, 0.0, 0.2, -0.1, 0.4, -0.3]), (K,))
    b = self.param("B", _constant(np.linspace(-1.5, 1.5, K)), (K,))
    return u + b * _trunk(self, x)[:, None]


class FeatureD(nn.Module):
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=True):
    s = self.param("s", _constant(1.5), ())
    w = self.param(
        "W", _constant(np.stack([np.linspace(-1, 1, K), np.linspace(1, -0.5, K)])), (2, K)
    )
    b = self.param("b", _constant(np.linspace(0.2, -0.2, K)), (K,))
    m = _mean_pixel(x)
    features = jnp.stack([s * m, m**2], axis=-1)
    self.sow("intermediates", "features", features)
    return features @ w + b


# The independent side: each loss written out in jax.numpy, as functions of the
# players' parameters so that their gradients can be taken too.
def _cross_entropy(logits, labels):
  return -jnp.mean(log_softmax(logits)[jnp.arange(len(labels)), labels])


def _pixels(values):
  """uint8 images of constant value, and their mean pixel as the step sees it ([-1, 1])."""
  values = np.asarray(values, np.uint8)
  images = np.broadcast_to(values[:, None, None, None], (len(values), 28, 28, 1)).copy()
  return images, jnp.asarray(values, jnp.float32) * (2.0 / 255.0) - 1.0


def _one_step(method, config, G, D, C, data, num_devices):
  method, nets = methods.METHODS[method.__name__.split(".")[-1]], methods.Networks(G, D, C)
  extra = {k: v for k, v in data.items() if k.startswith("labelled_")}
  state = method.init(config, nets, data_lib.Split(data["image"], data["label"], "test"), extra)
  # The averages start away from the players (as they are after the first step), so a
  # step that played with an average instead of the player's parameters shows.
  away = lambda tree: jax.tree.map(lambda x: 0.1 - 0.7 * x, tree)  # noqa: E731
  state = state.replace(g_ema=away(state.g_ema), c_ema=away(state.c_ema))
  init = jax.device_get(state)
  step = method.make_step(method.step_config(config), nets)
  devices = jax.devices()[:num_devices]
  p_state, metrics = step_lib.pmap_step(step, devices)(
      replicate(state, devices), replicate(data, devices)
  )
  return init, jax.device_get(unreplicate(p_state)), jax.device_get(unreplicate(metrics))


def _check_averages(init, new, c_tracks):
  """The EMAs of G and of the classifier (`c_tracks`: C's or D's parameters) took one step,
  with the warm-up's decay at step 0, min(decay, 1 / 10)."""
  for average, before, target in (
      ("g_ema", init.g_ema, new.g.params),
      ("c_ema", init.c_ema, c_tracks),
  ):
    expected = jax.tree.map(lambda e, p: e + 0.9 * (p - e), before, target)
    for a, b in zip(jax.tree.leaves(getattr(new, average)), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=average)


def _check_values(metrics, expected):
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


def _with_proportional_steps(config):
  """Adam with eps = 1 in its denominator: a first step of -lr g / (|g| + 1) per parameter,
  which tells the gradient itself (with the usual eps ~ 0 it would be -lr sign(g))."""
  for optim in config.optim.values():
    optim.eps, optim.eps_root = 1.0, 0.0


def _check_first_update(name, before, after, grads, optim):
  assert jax.tree.structure(before) == jax.tree.structure(grads), name
  flat = jax.tree_util.tree_leaves_with_path
  for (path, b), a, g in zip(
      flat(before), jax.tree.leaves(after), jax.tree.leaves(grads), strict=True
  ):
    key = f"{name}{jax.tree_util.keystr(path)}"
    g = np.asarray(g, np.float64)
    delta = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    expected = -optim.lr * g / (np.abs(g) + optim.eps)
    assert np.max(np.abs(expected)) > 1e-2 * optim.lr, key  # a gradient to check
    np.testing.assert_allclose(delta, expected, rtol=1e-2, atol=1e-3 * optim.lr, err_msg=key)


# With a shared trunk (`semi.shared_trunk`, the CIFAR-10 shared-trunk experiment) the trunk
# lives in C's state; D's passes use C's current trunk, and the trunk's update takes L_C's
# gradient plus trunk_d_weight times L_D's. C's adversarial term is on here too.
@pytest.mark.parametrize("num_devices, shared", [(1, False), (2, False), (2, True)])
def test_triple_gan_step_puts_its_terms_together(num_devices, shared, monkeypatch):
  config = mnist_triple_gan.get_config("smoke")
  config.semi.shared_trunk, config.semi.trunk_d_weight = shared, 0.4
  config.batch_size = K  # one batch is the whole training split and the whole labelled subset
  config.semi.init_batch = K
  config.semi.alpha, config.semi.alpha_p, config.semi.pseudo_start_step = 0.3, 0.7, 0
  config.semi.entropy_weight, config.semi.balance_weight = 0.2, 0.05
  config.semi.adversarial_scale = 0.5
  config.semi.consistency_weight = 0.0
  _with_proportional_steps(config)
  config.optim.d.lr = config.optim.c.lr = 0.05  # the new D and C differ clearly from the old
  # Labels for unlabelled pairs are drawn from C; here C's most likely class, so the
  # expected values can name them (the step's code is otherwise untouched).
  monkeypatch.setattr(jax.random, "categorical", lambda key, logits: jnp.argmax(logits, -1))
  unlabelled, m_u = _pixels(np.linspace(0, 255, K))
  labelled, m_l = _pixels(np.linspace(200, 20, K))
  y_l = np.arange(K, dtype=np.int32)
  data = {
      "image": unlabelled,
      "label": (y_l + 3) % K,  # the unlabelled images' true labels: monitoring only
      "labelled_image": labelled,
      "labelled_label": y_l,
  }
  init, new, metrics = _one_step(
      triple_gan,
      config,
      StandInG(),
      PairD(shared=shared),
      LinearC(shared=shared),
      data,
      num_devices,
  )
  g0, d0, c0, c1 = init.g.params, init.d.params, init.c.params, new.c.params
  d1 = new.d.params  # C and G play against the D of this step's update
  assert ("trunk" in c0, "trunk" in d0) == (shared, False)  # the one copy is in C's state
  y_g = np.arange(K)  # balanced: example i of the global batch gets label i mod K

  def m_g(g):
    return jnp.tanh(g["level"] + 0.1 * y_g)

  def t(c, m):  # the trunk's output; D's passes use C's trunk
    return c["trunk"]["a"] * m if shared else m

  def c_logits(c, m):
    return c["u"] + c["B"] * t(c, m)[:, None]

  def d_logits(d, c, m, y):
    return d["w"] * t(c, m) + d["v"][y]

  y_c = np.asarray(jnp.argmax(c_logits(c0, m_u), axis=1))
  top = np.sort(c_logits(c0, m_u), axis=1)
  assert len(set(y_c)) > 2 and np.min(top[:, -1] - top[:, -2]) > 0.01  # several labels, no ties
  alpha, s, alpha_p = 0.3, 0.5, 0.7

  def d_loss(d, c=c0):
    return (
        jnp.mean(softplus(-d_logits(d, c, m_l, y_l)))
        + alpha * jnp.mean(softplus(d_logits(d, c, m_u, y_c)))
        + (1 - alpha) * jnp.mean(softplus(d_logits(d, c, m_g(g0), y_g)))
    )

  def c_terms(c):
    sup = _cross_entropy(c_logits(c, m_l), y_l)
    # log(1 - D(x_u, y_c)) with the new D on the old trunk: a constant for C
    cost = -softplus(d_logits(d1, c0, m_u, y_c))
    log_prob = log_softmax(c_logits(c, m_u))[jnp.arange(K), y_c]
    adv = alpha * s * jnp.mean((cost - cost.mean()) * log_prob)  # REINFORCE's surrogate
    pseudo = _cross_entropy(c_logits(c, m_g(g0)), y_g)  # R_P: C on G's images, G's labels
    p_u = jax.nn.softmax(c_logits(c, m_u))
    ent = -jnp.mean(jnp.sum(p_u * jnp.log(p_u), axis=1))
    bal = -jnp.mean(jnp.log(p_u.mean(axis=0) + 1e-8))
    total = sup + adv + alpha_p * pseudo + 0.2 * ent + 0.05 * bal
    return total, {"sup": sup, "adv": adv, "pseudo": pseudo, "entropy": ent, "balance": bal}

  def g_loss(g):  # against the new D head on C's new trunk
    return jnp.mean(softplus(-d_logits(d1, c1, m_g(g), y_g)))

  c_loss, c = c_terms(c0)
  _check_values(
      metrics,
      {
          "d/loss": d_loss(d0),
          "c/loss_sup": c["sup"],
          "c/loss_adv": c["adv"],
          "c/loss_pseudo": c["pseudo"],
          "c/entropy": c["entropy"],
          "c/balance": c["balance"],
          "c/loss": c_loss,
          "c/pseudo_weight": alpha_p,
          "g/loss": g_loss(g0),
      },
  )
  assert abs(c["adv"]) > 1e-3  # not vacuous
  _check_first_update("d", d0, d1, jax.grad(d_loss)(d0), config.optim.d)
  c_grads = jax.grad(lambda c: c_terms(c)[0])(c0)
  if shared:  # L_D's gradient on the trunk, weighted; none on C's head
    trunk_grads = jax.grad(d_loss, argnums=1)(d0, c0)
    assert abs(trunk_grads["trunk"]["a"]) > 1e-3
    c_grads = jax.tree.map(lambda a, b: a + 0.4 * b, c_grads, trunk_grads)
  _check_first_update("c", c0, c1, c_grads, config.optim.c)
  _check_first_update("g", g0, new.g.params, jax.grad(g_loss)(g0), config.optim.g)
  _check_averages(init, new, c1)


# Two devices check the step's device-count independence with these stand-ins only for
# Triple-GAN: Improved-GAN's batches here are identical images, so per-device means equal
# global ones (test_semi.py's several-devices test covers its cross-device averages).
def test_improved_gan_step_puts_its_terms_together():
  config = mnist_improved_gan.get_config("smoke")
  config.batch_size = K
  config.semi.init_batch = K
  config.semi.unlabelled_weight = 0.6
  _with_proportional_steps(config)
  unlabelled, m_u = _pixels(np.full(K, 180))  # identical: G's real batch is drawn at random
  labelled, m_l = _pixels(np.linspace(230, 10, K))
  y_l = np.arange(K, dtype=np.int32)[::-1].copy()  # D starts right on 2 of them
  data = {
      "image": unlabelled,
      "label": y_l,
      "labelled_image": labelled,
      "labelled_label": y_l,
  }
  init, new, metrics = _one_step(improved_gan, config, StandInG(), FeatureD(), None, data, 1)
  g0, d0, d1 = init.g.params, init.d.params, new.d.params

  def m_g(g):
    return jnp.full(K, jnp.tanh(g["level"]))

  def features(d, m):
    return jnp.stack([d["s"] * m, m**2], axis=-1)

  def logits(d, m):
    return features(d, m) @ d["W"] + d["b"]

  def lse(x):
    return jax.nn.logsumexp(x, axis=-1)

  def d_terms(d):
    sup = _cross_entropy(logits(d, m_l), y_l)
    # The fake class's logit is fixed at 0: D(x) = Z / (Z + 1), its logit lse(l(x)).
    unsup = 0.5 * jnp.mean(softplus(-lse(logits(d, m_u)))) + 0.5 * jnp.mean(
        softplus(lse(logits(d, m_g(g0))))
    )
    return sup + 0.6 * unsup, (sup, unsup)

  def g_loss(g):  # feature matching on the new D's last hidden layer: unlabelled against G's
    return jnp.mean((features(d1, m_u).mean(0) - features(d1, m_g(g)).mean(0)) ** 2)

  d_loss, (sup, unsup) = d_terms(d0)
  _check_values(
      metrics,
      {
          "d/loss_sup": sup,
          "d/loss_unsup": unsup,
          "d/loss": d_loss,
          "g/loss": g_loss(g0),
          "d/train_acc": jnp.mean(jnp.argmax(logits(d0, m_l), 1) == y_l),
      },
  )
  assert 0 < metrics["d/train_acc"] < 1
  _check_first_update("d", d0, d1, jax.grad(lambda d: d_terms(d)[0])(d0), config.optim.d)
  _check_first_update("g", g0, new.g.params, jax.grad(g_loss)(g0), config.optim.g)
  _check_averages(init, new, d1)  # the classifier is D's EMA


# Triple-GAN as its authors' code runs it (`experiments/mnist_triple_gan.py:reference`).
class OutputLayer(nn.Module):

  @nn.compact
  def __call__(self, t):
    u = self.param("bias", _constant([0.3, -0.2, 0.5, 0.1, -0.4, 0.0, 0.2, -0.1, 0.4, -0.3]), (K,))
    return u + self.param("kernel", _constant(np.linspace(-1.5, 1.5, K)), (K,)) * t[:, None]


class LayeredC(nn.Module):
  """LinearC with its parameters in a named output layer, and a running mean of m."""

  OUTPUT_LAYER: ClassVar[str] = "out"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=True):
    m = _mean_pixel(x)
    mean = self.variable("batch_stats", "mean", jnp.zeros, ())
    if train and not self.is_initializing():
      mean.value = 0.9 * mean.value + 0.1 * jnp.mean(m)
    return OutputLayer(name=self.OUTPUT_LAYER)(m)


def test_argmax_adversarial_term_by_hand():
  """0.5 mean(p_max softplus(-d)), its gradient through p_max only."""
  logits = jnp.log(jnp.array([[1.0, 3.0], [2.0, 2.0]]))  # p_max 3/4 and 1/2
  d = jnp.array([0.0, np.log(3.0)])  # softplus(-d): log 2, log(4/3)
  expected = 0.5 * (0.75 * np.log(2.0) + 0.5 * np.log(4.0 / 3.0)) / 2
  np.testing.assert_allclose(triple_gan.argmax_adversarial_loss(logits, d, 0.5), expected, 1e-6)
  assert float(jnp.abs(jax.grad(triple_gan.argmax_adversarial_loss, 1)(logits, d, 0.5)).sum()) == 0


def test_triple_gan_reference_step_puts_its_terms_together(monkeypatch):
  """The code's D real set, batch sizes, adversarial term, order, weight decay and EMA."""
  config = mnist_triple_gan.get_config("smoke,reference")
  config.batch_size = K  # C's unlabelled batch, and D's classifier-labelled fake pairs
  config.semi.labels_per_class, config.semi.init_batch = 1, K
  # 15 generated pairs: classes 0-4 twice, 5-9 once, so a batch of another size shows.
  config.semi.batches.update(labelled=K, generated=15)
  config.semi.d_batches.update(labelled=2, unlabelled=3 * K)  # every unlabelled image
  config.semi.alpha, config.semi.alpha_p, config.semi.pseudo_start_step = 0.3, 0.7, 0
  config.semi.entropy_weight, config.semi.balance_weight = 0.2, 0.05
  config.semi.adversarial_scale, config.semi.classifier_weight_decay = 0.5, 0.01
  _with_proportional_steps(config)
  for player in ("d", "c", "g"):  # the new players differ clearly from the old
    config.optim[player].lr = 0.05
  unlabelled, m_all = _pixels(np.linspace(0, 255, 3 * K))
  labelled, m_l = _pixels(np.linspace(200, 20, K))
  y_l = np.arange(K, dtype=np.int32)
  data = {
      "image": unlabelled,
      "label": np.arange(3 * K, dtype=np.int32) % K,  # monitoring only
      "labelled_image": labelled,
      "labelled_label": y_l,
  }
  # Which images each walk draws: the first batch of its stream's first permutation.
  rng = jax.random.PRNGKey(config.seed)

  def first(stream, n, size):
    return np.asarray(data_lib.epoch_permutation(streams.key(rng, stream), 0, n))[:size]

  m_u = m_all[first("data", 3 * K, K)]
  d_lab = first("d_labelled", K, 2)
  init, new, metrics = _one_step(triple_gan, config, StandInG(), PairD(), LayeredC(), data, 1)
  g0, d0, c0 = init.g.params, init.d.params, init.c.params
  g1, d1, c1 = new.g.params, new.d.params, new.c.params
  y_g = np.arange(15) % K

  def m_g(g):
    return jnp.tanh(g["level"] + 0.1 * y_g)

  def c_logits(c, m):
    return c["out"]["bias"] + c["out"]["kernel"] * m[:, None]

  def d_logits(d, m, y):
    return d["w"] * m + d["v"][y]

  def top(m):  # C's argmax labels, from the C of the step's start
    return np.asarray(jnp.argmax(c_logits(c0, m), axis=1))

  for m in (m_u, m_all):
    best = np.sort(c_logits(c0, m), axis=1)
    assert len(set(top(m))) > 2 and np.min(best[:, -1] - best[:, -2]) > 0.01  # no ties
  alpha, s, alpha_p = 0.3, 0.5, 0.7

  def d_loss(d):  # real: D's 2 labelled pairs and all 30 images with C's labels
    m_real = jnp.concatenate([m_l[d_lab], m_all])
    y_real = np.concatenate([y_l[d_lab], top(m_all)])
    return (
        jnp.mean(softplus(-d_logits(d, m_real, y_real)))
        + alpha * jnp.mean(softplus(d_logits(d, m_u, top(m_u))))
        + (1 - alpha) * jnp.mean(softplus(d_logits(d, m_g(g0), y_g)))
    )

  def c_terms(c):
    p_u = jax.nn.softmax(c_logits(c, m_u))
    # the new D's non-saturating cost of C's argmax pairs, weighted by C's top probability
    adv = alpha * s * jnp.mean(jnp.max(p_u, axis=1) * softplus(-d_logits(d1, m_u, top(m_u))))
    sup = _cross_entropy(c_logits(c, m_l), y_l)
    pseudo = _cross_entropy(c_logits(c, m_g(g1)), y_g)  # R_P: fresh pairs of the new G
    ent = -jnp.mean(jnp.sum(p_u * jnp.log(p_u), axis=1))
    bal = -jnp.mean(jnp.log(p_u.mean(axis=0) + 1e-8))
    decay = jnp.sum(c["out"]["kernel"] ** 2)
    total = sup + adv + alpha_p * pseudo + 0.2 * ent + 0.05 * bal + 0.01 * decay
    parts = {"sup": sup, "adv": adv, "pseudo": pseudo, "entropy": ent, "balance": bal}
    return total, parts | {"weight_decay": decay}

  def g_loss(g):  # 15 fresh pairs against the new D
    return jnp.mean(softplus(-d_logits(d1, m_g(g), y_g)))

  c_loss, c = c_terms(c0)
  _check_values(
      metrics,
      {
          "d/loss": d_loss(d0),
          "c/loss_sup": c["sup"],
          "c/loss_adv": c["adv"],
          "c/loss_pseudo": c["pseudo"],
          "c/entropy": c["entropy"],
          "c/balance": c["balance"],
          "c/weight_decay": c["weight_decay"],
          "c/loss": c_loss,
          "g/loss": g_loss(g0),
      },
  )
  _check_first_update("d", d0, d1, jax.grad(d_loss)(d0), config.optim.d)
  _check_first_update("c", c0, c1, jax.grad(lambda c: c_terms(c)[0])(c0), config.optim.c)
  _check_first_update("g", g0, g1, jax.grad(g_loss)(g0), config.optim.g)
  _check_averages(init, new, c1)
  # C's batch-norm statistics (here: from its pass over x_u) are averaged too, and scored.
  np.testing.assert_allclose(new.c.batch_stats["mean"], 0.1 * jnp.mean(m_u), rtol=1e-5)
  np.testing.assert_allclose(new.c_ema_stats["mean"], 0.9 * new.c.batch_stats["mean"], rtol=1e-5)
  _, variables = triple_gan.classifier(LayeredC(), new)
  assert variables["batch_stats"] is new.c_ema_stats
