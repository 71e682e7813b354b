"""Parts the 32x32 networks share: spectral normalisation, class conditioning, D's head,
the minibatch standard-deviation channel.

Spectral normalisation (Miyato et al. 2018) divides a layer's weight W by an
estimate of its largest singular value, so each layer is (about) 1-Lipschitz.
`spectral` wraps a layer in `flax.linen.SpectralNorm`, which keeps the power
iteration's vector u and the last estimate sigma in the "batch_stats"
collection, beside batch-norm statistics:

  * train=True: every call runs one power-iteration step from the stored u,
    normalises with the new estimate and writes u and sigma back, so a training
    step must apply D with `mutable=["batch_stats"]` and keep what it returns.
    As in the paper, the estimate improves over the training steps rather than
    within one (u carries over).
  * train=False: the stored u is read, never written; evaluation is a pure
    function of the variables.

Never apply a spectrally normalised D with "params" mutable: flax's wrapper
then writes the normalised weights W / sigma over the parameters.

Convolution kernels (kh, kw, in, out) are normalised as (kh*kw*in, out)
matrices, the paper's reshaping; embeddings as (classes, channels) matrices;
biases are left alone. The parameters, their tree and their initial values,
are the same with and without spectral normalisation (`enabled=False` applies
the layer as is).

Class conditioning, `num_classes` = K > 0 (0: unconditional):

  * G: conditional batch norm (de Vries et al. 2017; Miyato & Koyama 2018).
    Batch statistics are shared by all classes; the scale and shift are rows
    gamma[y], beta[y] of per-class tables that start at 1 and 0, so a
    conditional G ignores y until training moves the tables apart. Called
    without y, G draws class i mod K for example i (as `improved_gan` does),
    so sample grids and evaluators see every class equally often.
  * D: `discriminator_head` turns the features phi(x) (B, F) into
      logit(x, y) = w . phi(x) [+ b] + <embed(y), phi(x)>   (projection,
                                                             Miyato & Koyama 2018)
    and, with an auxiliary-classifier head (AC-GAN, Odena et al. 2017),
      class_logits(x) = W_c phi(x) + b_c                    (B, K).
    Without y the projection term is left out (logit = w . phi(x) [+ b]), the
    way the reference code treats a missing label.

Return convention of every discriminator built on `discriminator_head`: the
real/fake logits, shape (B,); with `ac_head=True` the pair
`(logits (B,), class_logits (B, K))`. The class logits never see y.

Mixed precision (`dtype`, an attribute of every 32x32 network; `config.model.dtype`
chooses it, see `gan.models.build`): with `dtype=jnp.bfloat16` the convolutions,
dense layers and batch norms compute in bfloat16 while every parameter, batch-norm
statistic and power-iteration vector stays float32 (`param_dtype`), so gradients and
the optimizer state are float32 too. Batch norm reduces its statistics in float32,
spectral normalisation runs its power iteration and divides W by sigma in float32
before the layer casts W / sigma to bfloat16, and D's head (`discriminator_head`)
runs in float32 on float32 features, so logits and losses are float32. A generator
returns float32 images. bfloat16 has float32's exponent range, so no loss scaling is
needed (float16 would; it is not offered).

Minibatch standard deviation (Karras et al. 2018, Sec. 3), `minibatch_std` =
group size G > 0 on a discriminator: the batch is cut into groups of G
consecutive examples; in each group the standard deviation of every feature
at every position is taken over the group's examples, averaged into one
number, and appended as a constant channel to each of the group's feature
maps, so D can see how varied a batch is. Groups are consecutive examples
(the paper's code interleaves them, which ties the groups to the batch size),
so they never straddle two devices and a batch split over devices gets the
same statistics whenever the per-device batch is a multiple of G (the
training step checks this).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def spectral(layer: nn.Module, x: jax.Array, *, enabled: bool, train: bool) -> jax.Array:
  """`layer(x)`, with `layer`'s weights spectrally normalised if `enabled`.

  Call from inside a compact method: the wrapper is created in the caller's
  scope and named after the layer (`<name>_sn`) when the layer has a name.
  """
  if not enabled:
    return layer(x)
  wrapper = nn.SpectralNorm(layer, name=f"{layer.name}_sn" if layer.name else None)
  if not layer.parent.is_initializing():
    return wrapper(x, update_stats=train)
  # At init, flax's SpectralNorm stores the normalised view W / sigma (sigma from
  # one power-iteration step from a random u) as the layer's parameters. The
  # function D computes is the same either way, but the optimiser would start from
  # weights of spectral norm ~1 instead of the initialiser's scale, unlike the
  # paper. So create the weights with the layer's own initialiser first and put
  # them back after the wrapper has created u and sigma.
  layer(x)
  initial = dict(layer.variables["params"])  # a snapshot: the scope's dict is updated in place
  y = wrapper(x, update_stats=train)
  for name, value in initial.items():
    layer.put_variable("params", name, value)
  return y


def minibatch_stddev(x: jax.Array, group_size: int) -> jax.Array:
  """Features x (B, H, W, C) with the minibatch standard-deviation channel appended: (B, H, W, C+1).

  A batch smaller than `group_size` is one group (as at initialisation).
  """
  batch = x.shape[0]
  group = min(group_size, batch)
  if batch % group:
    raise ValueError(f"minibatch_std: batch {batch} is not a multiple of the group size {group}")
  groups = x.reshape(batch // group, group, *x.shape[1:])
  # The biased variance over the group and the 1e-8 under the root, as in the paper's code.
  std = jnp.sqrt(jnp.var(groups, axis=1) + 1e-8)
  statistic = jnp.mean(std.reshape(batch // group, -1), axis=1)
  channel = jnp.broadcast_to(
      jnp.repeat(statistic, group)[:, None, None, None], (*x.shape[:-1], 1)
  ).astype(x.dtype)
  return jnp.concatenate([x, channel], axis=-1)


def generator_labels(y: jax.Array | None, batch: int, num_classes: int) -> jax.Array | None:
  """The integer labels a generator conditions on: `y`, class i mod K if None, or None if K=0."""
  if not num_classes:
    return None
  if y is None:
    return jnp.arange(batch) % num_classes
  return y


class ConditionalBatchNorm(nn.Module):
  """Batch norm whose scale and shift depend on the class (plain batch norm if K=0).

  Attributes:
    num_classes: K; 0 gives ordinary batch norm with learned scale and shift.
    momentum: running-average momentum of the batch statistics.
    epsilon: added to the variance.
    axis_name: data-parallel axis over which batch statistics are averaged in
      training, so a batch split over devices normalises like the whole batch.
    dtype: computation dtype (statistics are reduced, and kept, in float32).
  """

  num_classes: int = 0
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None, train: bool) -> jax.Array:
    conditional = self.num_classes > 0
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.momentum,
        epsilon=self.epsilon,
        use_scale=not conditional,
        use_bias=not conditional,
        axis_name=self.axis_name if train else None,
        dtype=self.dtype,
        name="norm",
    )(x)
    if not conditional:
      return x
    if y is None:
      raise ValueError("a conditional batch norm needs labels y")
    features = x.shape[-1]
    table = functools.partial(nn.Embed, self.num_classes, features, dtype=self.dtype)
    gamma = table(embedding_init=nn.initializers.ones, name="scale")
    beta = table(embedding_init=nn.initializers.zeros, name="shift")
    # (B, C) -> (B, 1, ..., 1, C), broadcast over the spatial axes.
    expand = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
    return x * gamma(y).reshape(expand) + beta(y).reshape(expand)


def discriminator_head(
    D: nn.Module,
    features: jax.Array,
    y: jax.Array | None,
    *,
    train: bool,
    use_bias: bool,
    kernel_init: Any,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Real/fake logits (B,) from features (B, F) [and labels y], plus class logits with an AC head.

  Call from the discriminator `D`'s compact `__call__`: its attributes
  `num_classes`, `projection`, `ac_head` and `spectral_norm` choose the head,
  whose layers are named "dense", "embed" (projection) and "classifier" (AC
  head) in D's scope. The head computes in float32, whatever D's `dtype`.
  `sow`s the features ("intermediates"/"features") for the health monitor. See
  the module docstring for the formula and the return convention.
  """
  if D.ac_head and not D.num_classes:
    raise ValueError("an AC head needs num_classes > 0")
  features = features.astype(jnp.float32)  # a bfloat16 D's head still computes in float32
  D.sow("intermediates", "features", features)
  sn = {"enabled": D.spectral_norm, "train": train}
  dense = nn.Dense(1, use_bias=use_bias, kernel_init=kernel_init, name="dense")
  logits = spectral(dense, features, **sn)[:, 0]
  if D.num_classes and D.projection and y is not None:
    embed = nn.Embed(D.num_classes, features.shape[-1], embedding_init=kernel_init, name="embed")
    logits = logits + jnp.sum(spectral(embed, y, **sn) * features, axis=-1)
  if not D.ac_head:
    return logits
  classifier = nn.Dense(D.num_classes, kernel_init=kernel_init, name="classifier")
  return logits, spectral(classifier, features, **sn)
