"""The semi-supervised steps put their loss terms together as the papers say.

tests/test_semi.py checks each loss function against hand-computed values, and
that a step is the same on one device and several. Here one whole step runs,
under pmap, with stand-in players simple enough that every loss it reports
can be worked out independently in NumPy: which batch goes into which term,
with which weight (alpha != 1/2, unlabelled_weight != 1, so swapped terms
show), against the old or the new D.

The stand-ins see an image only through its mean pixel m:
  G(z, y)   a constant image, tanh(level + 0.1 y) (y = 0 unconditional)
  D(x, y)   Triple-GAN's pair discriminator: w m + v[y]
  C(x)      Triple-GAN's classifier: logits u + B m
  D(x)      Improved-GAN's K-class discriminator: features f = (s m, m^2),
            logits f W + b
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import mnist_improved_gan, mnist_triple_gan
from gan import step as step_lib
from gan.semi import improved_gan, triple_gan
from gan.train import replicate, unreplicate

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


class PairD(nn.Module):
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=True, y=None):
    w = self.param("w", _constant(0.5), ())
    v = self.param("v", _constant(np.linspace(-0.5, 0.5, K)), (K,))
    return w * _mean_pixel(x) + v[y]


class LinearC(nn.Module):
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=True):
    u = self.param("u", _constant([0.3, -0.2, 0.5, 0.1, -0.4, 0.0, 0.2, -0.1, 0.4, -0.3]), (K,))
    b = self.param("B", _constant(np.linspace(-1.5, 1.5, K)), (K,))
    return u + b * _mean_pixel(x)[:, None]


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


# NumPy, float64: the independent side.
def _softplus(x):
  return np.logaddexp(0.0, x)


def _log_softmax(logits):
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def _cross_entropy(logits, labels):
  return -np.mean(_log_softmax(logits)[np.arange(len(labels)), labels])


def _pixels(values):
  """uint8 images of constant value, and their mean pixel as the step sees it ([-1, 1])."""
  values = np.asarray(values, np.uint8)
  images = np.broadcast_to(values[:, None, None, None], (len(values), 28, 28, 1)).copy()
  return images, values.astype(np.float64) * (2.0 / 255.0) - 1.0


def _one_step(method, config, G, D, C, data, num_devices):
  num_labelled = len(data["labelled_label"])
  state = method.create_state(config, G, D, C, data["image"], num_labelled)
  init = jax.device_get(state)
  step = method.make_train_step(method.StepConfig.from_config(config), G, D, C)
  devices = jax.devices()[:num_devices]
  p_state, metrics = step_lib.pmap_step(step, devices)(
      replicate(state, devices), replicate(data, devices)
  )
  return init, jax.device_get(unreplicate(p_state)), jax.device_get(unreplicate(metrics))


def _params(tree):
  return {k: np.asarray(v, np.float64) for k, v in tree.items()}


@pytest.mark.parametrize("num_devices", [1, 2])
def test_triple_gan_step_puts_its_terms_together(num_devices, monkeypatch):
  config = mnist_triple_gan.get_config("smoke")
  config.batch_size = K  # one batch is the whole training split and the whole labelled subset
  config.semi.init_batch = K
  config.semi.alpha, config.semi.alpha_p, config.semi.pseudo_start_step = 0.3, 0.7, 0
  config.semi.entropy_weight, config.semi.balance_weight = 0.2, 0.05
  config.semi.adversarial_scale = 0.5
  config.semi.consistency_weight = 0.0
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
      triple_gan, config, StandInG(), PairD(), LinearC(), data, num_devices
  )
  d0, d1, c0 = _params(init.d.params), _params(new.d.params), _params(init.c.params)
  assert not np.allclose(d0["v"], d1["v"])  # D moved, and C and G met the moved D
  level = float(init.g.params["level"])
  y_g = np.arange(K)  # balanced: example i of the global batch gets label i mod K
  m_g = np.tanh(level + 0.1 * y_g)

  def c_logits(m):
    return c0["u"] + c0["B"] * m[:, None]

  y_c = np.argmax(c_logits(m_u), axis=1)
  top = np.sort(c_logits(m_u), axis=1)
  assert len(set(y_c)) > 2 and np.min(top[:, -1] - top[:, -2]) > 0.01  # several labels, no ties

  alpha, s, alpha_p = 0.3, 0.5, 0.7
  d_loss = (
      np.mean(_softplus(-(d0["w"] * m_l + d0["v"][y_l])))
      + alpha * np.mean(_softplus(d0["w"] * m_u + d0["v"][y_c]))
      + (1 - alpha) * np.mean(_softplus(d0["w"] * m_g + d0["v"][y_g]))
  )
  sup = _cross_entropy(c_logits(m_l), y_l)
  cost = -_softplus(d1["w"] * m_u + d1["v"][y_c])  # log(1 - D(x_u, y_c)), with the new D
  log_prob = _log_softmax(c_logits(m_u))[np.arange(K), y_c]
  adv = alpha * s * np.mean((cost - cost.mean()) * log_prob)
  pseudo = _cross_entropy(c_logits(m_g), y_g)  # R_P: C on G's images, G's labels
  p_u = np.exp(_log_softmax(c_logits(m_u)))
  ent = -np.mean(np.sum(p_u * np.log(p_u), axis=1))
  bal = -np.mean(np.log(p_u.mean(axis=0) + 1e-8))
  g_loss = np.mean(_softplus(-(d1["w"] * m_g + d1["v"][y_g])))
  expected = {
      "d/loss": d_loss,
      "c/loss_sup": sup,
      "c/loss_adv": adv,
      "c/loss_pseudo": pseudo,
      "c/entropy": ent,
      "c/balance": bal,
      "c/loss": sup + adv + alpha_p * pseudo + 0.2 * ent + 0.05 * bal,
      "c/pseudo_weight": alpha_p,
      "g/loss": g_loss,
  }
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
  assert abs(adv) > 1e-3  # not vacuous
  for player in ("g", "d", "c"):
    assert metrics[f"{player}/grad_norm"] > 0


@pytest.mark.parametrize("num_devices", [1, 2])
def test_improved_gan_step_puts_its_terms_together(num_devices):
  config = mnist_improved_gan.get_config("smoke")
  config.batch_size = K
  config.semi.init_batch = K
  config.semi.unlabelled_weight = 0.6
  unlabelled, m_u = _pixels(np.full(K, 180))  # identical: G's real batch is drawn at random
  labelled, m_l = _pixels(np.linspace(230, 10, K))
  y_l = np.arange(K, dtype=np.int32)[::-1].copy()  # D starts right on 2 of them
  data = {
      "image": unlabelled,
      "label": y_l,
      "labelled_image": labelled,
      "labelled_label": y_l,
  }
  init, new, metrics = _one_step(
      improved_gan, config, StandInG(), FeatureD(), None, data, num_devices
  )
  d0, d1 = _params(init.d.params), _params(new.d.params)
  assert not np.allclose(d0["s"], d1["s"])
  m_g = np.full(K, np.tanh(float(init.g.params["level"])))

  def features(d, m):
    return np.stack([d["s"] * m, m**2], axis=-1)

  def logits(d, m):
    return features(d, m) @ d["W"] + d["b"]

  def lse(x):
    return np.logaddexp.reduce(x, axis=-1)

  sup = _cross_entropy(logits(d0, m_l), y_l)
  # The fake class's logit is fixed at 0: D(x) = Z / (Z + 1), its logit lse(l(x)).
  unsup = 0.5 * np.mean(_softplus(-lse(logits(d0, m_u)))) + 0.5 * np.mean(
      _softplus(lse(logits(d0, m_g)))
  )
  # Feature matching on the new D's last hidden layer: unlabelled images against G's.
  fm = np.mean((features(d1, m_u).mean(0) - features(d1, m_g).mean(0)) ** 2)
  expected = {
      "d/loss_sup": sup,
      "d/loss_unsup": unsup,
      "d/loss": sup + 0.6 * unsup,
      "g/loss": fm,
      "d/train_acc": np.mean(np.argmax(logits(d0, m_l), 1) == y_l),
  }
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
  assert 0 < metrics["d/train_acc"] < 1
  # The classifier's EMA starts from D and moves toward the new D.
  assert not np.allclose(np.asarray(new.c_ema["s"]), d0["s"])
