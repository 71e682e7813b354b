"""The 32x32 networks (`gan.models.sngan`, `gan.models.dcgan32`, `gan.models.conditioning`).

Parameter counts are checked at the published sizes with `jax.eval_shape` (no
compute); everything that runs uses tiny widths.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from gan import models
from gan.models import dcgan32, sngan

K = 4  # classes in the conditional tests
IMAGES = jnp.zeros((2, 32, 32, 3))
LABELS = jnp.zeros((2,), jnp.int32)


@pytest.fixture(autouse=True, scope="module")
def _fast_compilation():
  """Compile quickly: these tests need small programs, not fast ones or a particular stream.

  On XLA:CPU, compiling threefry's random-number kernel for one initialiser
  took ~2 s on the 2-core machine, ~10x longer than the "rbg" generator's, and
  parameter initialisation needs one per weight shape.
  """
  saved = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  with jax.default_prng_impl("rbg"):
    yield
  jax.config.update("jax_disable_most_optimizations", saved)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_variables(module, x, **kwargs):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False, **kwargs))


def _images(seed: int, n: int = 4) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 32, 32, 3), minval=-1.0, maxval=1.0)


# We found no published parameter totals for these networks (the SNGAN paper and the
# authors' code state none, nor do Mimicry's or PyTorch-StudioGAN's READMEs), so the
# expected numbers are counted by hand from the layer lists: a k x k convolution
# from a to b channels has k*k*a*b weights + b biases, batch norm 2*C, conditional
# batch norm 2*K*C. Layer lists: Miyato et al. 2018, Table 3 and the appendix, with
# the details the paper leaves out taken from the authors' code
# (pfnet-research/sngan_projection gen_models/resnet_32.py, dis_models/snresnet_32.py
# and resblocks.py: biases everywhere except D's output layer, 1x1 shortcut
# convolutions where a block resamples or changes width, an unconditional last BN in
# G; pfnet-research/chainer-gan-lib common/net.py: BN + ReLU after the CNN G's dense).
PARAMETER_COUNTS = [
    # SNGAN ResNet G, z 128, width 256:
    #   dense 128*4096 + 4096                                            =   528,384
    #   3 x GBlock: BN 512 + conv3x3 (589,824 + 256) + BN 512
    #               + conv3x3 (589,824 + 256) + conv1x1 (65,536 + 256)    = 3,740,928
    #   BN 512 + conv3x3 256->3 (6,912 + 3)                              =     7,427
    pytest.param(sngan.ResNetGenerator32(), (2, 128), {}, 4_276_739, id="sngan_resnet32_G"),
    # The same with 10 classes: each of the 6 block BNs has 2*10*256 instead of
    # 2*256 parameters, 6 * 4,608 = 27,648 more.
    pytest.param(
        sngan.ResNetGenerator32(num_classes=10), (2, 128), {"y": LABELS}, 4_304_387, id="cond_G"
    ),
    # SNGAN ResNet D, width 128:
    #   optimized block: conv3x3 3->128 (3,456 + 128) + conv3x3 (147,456 + 128)
    #                    + conv1x1 3->128 (384 + 128)                     =   151,680
    #   down block: 2 x 147,584 + conv1x1 (16,384 + 128)                  =   311,680
    #   2 plain blocks: 4 x 147,584                                       =   590,336
    #   dense 128->1 without bias                                         =       128
    pytest.param(sngan.ResNetDiscriminator32(), IMAGES.shape, {}, 1_053_824, id="sngan_resnet32_D"),
    # Projection D with 10 classes: + embedding 10 x 128 = 1,280.
    pytest.param(
        sngan.ResNetDiscriminator32(num_classes=10), IMAGES.shape, {"y": LABELS}, 1_055_104, id="PD"
    ),
    # ... with an AC head as well: + dense 128->10 (1,280 + 10).
    pytest.param(
        sngan.ResNetDiscriminator32(num_classes=10, ac_head=True),
        IMAGES.shape,
        {"y": LABELS},
        1_056_394,
        id="PD_AC",
    ),
    # SNGAN standard CNN G, z 128:
    #   dense 128*8192 + 8192 + BN 1,024                                 = 1,057,792
    #   deconv4x4 512->256 (2,097,152 + 256) + BN 512                    = 2,097,920
    #   deconv4x4 256->128 (524,288 + 128) + BN 256                      =   524,672
    #   deconv4x4 128->64 (131,072 + 64) + BN 128                        =   131,264
    #   conv3x3 64->3 (1,728 + 3)                                        =     1,731
    pytest.param(sngan.CNNGenerator32(), (2, 128), {}, 3_813_379, id="sngan_cnn32_G"),
    # SNGAN standard CNN D (the paper's Table 3 channels):
    #   conv3x3 3->64 1,792; conv4x4 64->64 65,600; conv3x3 64->128 73,856;
    #   conv4x4 128->128 262,272; conv3x3 128->256 295,168;
    #   conv4x4 256->256 1,048,832; conv3x3 256->512 1,180,160; dense 8192->1 8,193
    pytest.param(sngan.CNNDiscriminator32(), IMAGES.shape, {}, 2_935_873, id="sngan_cnn32_D"),
    # DCGAN 32x32, z 100, width 64 (no bias before batch norm):
    #   dense 100*4096 409,600 + BN 512; convT5x5 256->128 819,200 + BN 256;
    #   convT5x5 128->64 204,800 + BN 128; convT5x5 64->3 4,800 + 3
    pytest.param(dcgan32.Generator32(), (2, 100), {}, 1_439_299, id="dcgan32_G"),
    #   conv5x5 3->64 4,800 + 64; conv5x5 64->128 204,800 + BN 256;
    #   conv5x5 128->256 819,200 + BN 512; dense 4096->1 4,097
    pytest.param(dcgan32.Discriminator32(), IMAGES.shape, {}, 1_033_729, id="dcgan32_D"),
]


@pytest.mark.parametrize(("module", "input_shape", "kwargs", "expected"), PARAMETER_COUNTS)
def test_parameter_counts_at_published_sizes(module, input_shape, kwargs, expected):
  variables = _abstract_variables(module, jnp.zeros(input_shape), **kwargs)
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize(
    "make_D",
    [
        pytest.param(functools.partial(sngan.CNNDiscriminator32, width=4), id="cnn"),
        pytest.param(functools.partial(sngan.ResNetDiscriminator32, width=8), id="resnet"),
        pytest.param(functools.partial(dcgan32.Discriminator32, width=8), id="dcgan"),
    ],
)
def test_spectral_norm_adds_state_and_keeps_the_initial_weights(make_D):
  x, y = _images(6), jnp.arange(4) % K
  with_sn = make_D(spectral_norm=True, num_classes=K).init(
      jax.random.PRNGKey(0), x, train=False, y=y
  )
  without = make_D(spectral_norm=False, num_classes=K).init(
      jax.random.PRNGKey(0), x, train=False, y=y
  )
  # Same parameters, drawn from the layers' own initialisers (flax's SpectralNorm
  # alone would store them divided by a first sigma estimate).
  jax.tree.map(np.testing.assert_array_equal, with_sn["params"], without["params"])
  # One (u, sigma) pair per normalised weight: every kernel plus the embedding.
  params = traverse_util.flatten_dict(with_sn["params"])
  kernels = [k for k in params if k[-1] in ("kernel", "embedding")]
  sigmas = [
      k for k in traverse_util.flatten_dict(with_sn["batch_stats"]) if k[-1].endswith("sigma")
  ]
  assert len(sigmas) == len(kernels) > 0


SMALL = [
    pytest.param("dcgan32", 8, id="dcgan32"),
    pytest.param("sngan_cnn32", 4, id="sngan_cnn32"),
    pytest.param("sngan_resnet32", 8, id="sngan_resnet32"),
]


@pytest.mark.parametrize(("name", "width"), SMALL)
def test_registered_pairs_shapes_and_ranges(name, width):
  model = ml_collections.ConfigDict(
      {"generator": name, "discriminator": name, "g": {"width": width}, "d": {"width": width}}
  )
  G, D = models.build(model, axis_name=None)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  g_vars = G.init(jax.random.PRNGKey(1), z, train=False)
  d_vars = D.init(jax.random.PRNGKey(2), IMAGES, train=False)

  images, _ = G.apply(g_vars, z, train=True, mutable=["batch_stats"])
  assert images.shape == (4, 32, 32, 3)
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  assert float(jnp.std(images)) > 0.0
  assert G.apply(g_vars, z, train=False).shape == (4, 32, 32, 3)

  logits, _ = D.apply(d_vars, images, train=True, mutable=["batch_stats"])
  assert logits.shape == (4,)
  assert D.apply(d_vars, images, train=False).shape == (4,)


def _spectral_pairs(variables):
  """(weight as a matrix, stored sigma) for every spectrally normalised weight."""
  params = traverse_util.flatten_dict(variables["params"])
  pairs = []
  for path, sigma in traverse_util.flatten_dict(variables["batch_stats"]).items():
    if path[-1].endswith("/sigma"):
      # batch_stats/<scope>/<layer>_sn/"<layer>/<param>/sigma" -> params/<scope>/<layer>/<param>
      weight = params[path[:-2] + tuple(path[-1].split("/")[:-1])]
      pairs.append((np.asarray(weight).reshape(-1, weight.shape[-1]), float(sigma)))
  return pairs


SN_DISCRIMINATORS = [
    pytest.param(sngan.CNNDiscriminator32(width=4, num_classes=K), id="cnn"),
    pytest.param(sngan.ResNetDiscriminator32(width=8, num_classes=K, ac_head=True), id="resnet"),
    pytest.param(
        dcgan32.Discriminator32(width=8, batch_norm=False, spectral_norm=True), id="dcgan"
    ),
]


@pytest.mark.parametrize("D", SN_DISCRIMINATORS)
def test_spectral_norm_bounds_top_singular_value_after_power_iterations(D):
  x, y = _images(0), jnp.arange(4) % K
  variables = D.init(jax.random.PRNGKey(1), x, train=False, y=y)

  @jax.jit
  def train_apply(batch_stats):
    _, mutated = D.apply(
        {"params": variables["params"], "batch_stats": batch_stats},
        x,
        train=True,
        y=y,
        mutable=["batch_stats"],
    )
    return mutated["batch_stats"]

  def normalised_top_singular_values(batch_stats):
    # The layer computes with W / sigma; power iteration approaches ||W||_2 from
    # below, so the normalised weight's top singular value is >= 1.
    pairs = _spectral_pairs({"params": variables["params"], "batch_stats": batch_stats})
    return np.array([np.linalg.svd(m, compute_uv=False)[0] / sigma for m, sigma in pairs])

  batch_stats = train_apply(variables["batch_stats"])  # one power-iteration step per call
  after_one = normalised_top_singular_values(batch_stats)
  for _ in range(49):
    batch_stats = train_apply(batch_stats)
  after_50 = normalised_top_singular_values(batch_stats)
  assert len(after_50) >= 4
  assert np.all(after_50 >= 1.0 - 1e-4) and np.all(after_50 <= 1.05), after_50
  assert np.max(after_one) > 1.1  # a single step is far off: u must carry over


@pytest.mark.parametrize("D", SN_DISCRIMINATORS)
def test_spectral_norm_leaves_stats_untouched_in_eval_mode(D):
  x, y = _images(1), jnp.arange(4) % K
  variables = D.init(jax.random.PRNGKey(2), x, train=False, y=y)
  first, mutated = D.apply(variables, x, train=False, y=y, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"], variables["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, D.apply(variables, x, train=False, y=y), first)
  # ... while a training-mode call moves u (so the comparison above can fail).
  _, trained = D.apply(variables, x, train=True, y=y, mutable=["batch_stats"])
  changed = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), trained["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))


def _scale_weights(params, factor: float):
  """Every weight matrix (kernel or embedding) times `factor`; biases unchanged."""
  return jax.tree.map(lambda p: p * factor if p.ndim >= 2 else p, params)


@pytest.mark.parametrize(
    "make_D",
    [
        pytest.param(functools.partial(sngan.CNNDiscriminator32, width=4), id="cnn"),
        pytest.param(functools.partial(sngan.ResNetDiscriminator32, width=8), id="resnet"),
        pytest.param(
            functools.partial(dcgan32.Discriminator32, width=8, batch_norm=False), id="dcgan"
        ),
    ],
)
def test_spectral_norm_covers_every_weight(make_D):
  # W / sigma(W) does not change when W is scaled, so with every weight normalised
  # D's output ignores a common scale on all of them; a weight left out breaks that.
  x, y = _images(2), jnp.arange(4) % K
  for spectral_norm in (True, False):
    D = make_D(num_classes=K, ac_head=True, spectral_norm=spectral_norm)
    variables = D.init(jax.random.PRNGKey(3), x, train=False, y=y)
    scaled = {**variables, "params": _scale_weights(variables["params"], 10.0)}
    before = D.apply(variables, x, train=False, y=y)
    after = D.apply(scaled, x, train=False, y=y)
    same = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-5), before, after)
    assert all(jax.tree.leaves(same)) == spectral_norm


def _perturb_class_tables(params, key):
  """Random per-class scales and shifts (they start at 1 and 0, identical for all classes)."""
  flat = traverse_util.flatten_dict(params)
  for i, path in enumerate(sorted(flat)):
    if path[-2] in ("scale", "shift"):
      flat[path] = flat[path] + jax.random.normal(jax.random.fold_in(key, i), flat[path].shape)
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize(
    "G",
    [
        pytest.param(sngan.CNNGenerator32(width=4, num_classes=K), id="cnn"),
        pytest.param(sngan.ResNetGenerator32(width=8, num_classes=K), id="resnet"),
        pytest.param(dcgan32.Generator32(width=8, num_classes=K), id="dcgan"),
    ],
)
def test_conditional_generator_output_depends_on_y(G):
  z = jax.random.normal(jax.random.PRNGKey(4), (K, 16))
  y = jnp.arange(K)
  other = y.at[0].set(1)  # only example 0's class changes
  variables = G.init(jax.random.PRNGKey(5), z, train=False, y=y)
  # At initialisation every class has scale 1 and shift 0: y has no effect yet.
  np.testing.assert_array_equal(
      G.apply(variables, z, train=False, y=y), G.apply(variables, z, train=False, y=other)
  )
  params = _perturb_class_tables(variables["params"], jax.random.PRNGKey(6))
  variables = {**variables, "params": params}
  out = G.apply(variables, z, train=False, y=y)
  out_other = G.apply(variables, z, train=False, y=other)
  assert not np.allclose(out[0], out_other[0])
  # Running statistics in eval mode: the other examples are unaffected.
  np.testing.assert_allclose(out[1:], out_other[1:], rtol=1e-5, atol=1e-6)
  # Without labels, example i is drawn from class i mod K.
  np.testing.assert_array_equal(G.apply(variables, z, train=False), out)


def test_projection_discriminator_adds_embedding_inner_product():
  D = sngan.ResNetDiscriminator32(width=8, num_classes=K, spectral_norm=False)
  x, y = _images(3), jnp.array([0, 1, 2, 1])
  variables = D.init(jax.random.PRNGKey(7), x, train=False, y=y)
  with_y, state = D.apply(variables, x, train=False, y=y, mutable=["intermediates"])
  without_y = D.apply(variables, x, train=False)
  features = state["intermediates"]["features"][0]
  embedding = variables["params"]["embed"]["embedding"]
  expected = jnp.sum(embedding[y] * features, axis=-1)
  np.testing.assert_allclose(with_y - without_y, expected, rtol=1e-4, atol=1e-4)
  assert not np.allclose(with_y, D.apply(variables, x, train=False, y=(y + 1) % K))


@pytest.mark.parametrize(
    "D",
    [
        pytest.param(sngan.CNNDiscriminator32(width=4, num_classes=K), id="cnn"),
        pytest.param(sngan.ResNetDiscriminator32(width=8, num_classes=K), id="resnet"),
        pytest.param(dcgan32.Discriminator32(width=8, num_classes=K), id="dcgan"),
    ],
)
def test_spectrally_normalised_projection_output_depends_on_y(D):
  x, y = _images(4), jnp.arange(4) % K
  variables = D.init(jax.random.PRNGKey(8), x, train=False, y=y)
  a = D.apply(variables, x, train=False, y=y)
  b = D.apply(variables, x, train=False, y=(y + 1) % K)
  assert np.all(np.abs(np.asarray(a) - np.asarray(b)) > 1e-6)


def test_ac_head_returns_class_logits_that_ignore_y():
  D = sngan.ResNetDiscriminator32(width=8, num_classes=K, ac_head=True)
  x, y = _images(5), jnp.arange(4) % K
  variables = D.init(jax.random.PRNGKey(9), x, train=False, y=y)
  logits, class_logits = D.apply(variables, x, train=False, y=y)
  assert logits.shape == (4,) and class_logits.shape == (4, K)
  logits_b, class_logits_b = D.apply(variables, x, train=False, y=(y + 1) % K)
  np.testing.assert_array_equal(class_logits, class_logits_b)
  assert not np.allclose(logits, logits_b)
  # An AC-GAN discriminator without the projection term: y changes nothing.
  plain = sngan.ResNetDiscriminator32(width=8, num_classes=K, ac_head=True, projection=False)
  plain_vars = plain.init(jax.random.PRNGKey(9), x, train=False, y=y)
  assert "embed" not in plain_vars["params"]
  jax.tree.map(
      np.testing.assert_array_equal,
      plain.apply(plain_vars, x, train=False, y=y),
      plain.apply(plain_vars, x, train=False, y=(y + 1) % K),
  )
  with pytest.raises(ValueError, match="num_classes"):
    sngan.ResNetDiscriminator32(width=8, ac_head=True).init(jax.random.PRNGKey(0), x, train=False)


def test_batch_statistics_averaged_over_devices_like_the_whole_batch():
  # Conditional G and batch-norm D: a batch split over 2 devices with `axis_name`
  # gives the same training-mode outputs and running statistics as one device.
  G = sngan.ResNetGenerator32(width=8, num_classes=K, axis_name="data")
  D = dcgan32.Discriminator32(width=8, num_classes=K, spectral_norm=True, axis_name="data")
  z = jax.random.normal(jax.random.PRNGKey(10), (8, 16))
  y = jnp.arange(8) % K
  g_vars = G.clone(axis_name=None).init(jax.random.PRNGKey(11), z, train=False, y=y)
  d_vars = D.clone(axis_name=None).init(jax.random.PRNGKey(12), IMAGES, train=False, y=LABELS)

  def both(G, D, z, y):
    images, g_state = G.apply(g_vars, z, train=True, y=y, mutable=["batch_stats"])
    logits, d_state = D.apply(d_vars, images, train=True, y=y, mutable=["batch_stats"])
    return images, logits, g_state, d_state

  whole = both(G.clone(axis_name=None), D.clone(axis_name=None), z, y)
  split = jax.pmap(functools.partial(both, G, D), axis_name="data", devices=jax.devices()[:2])(
      z.reshape(2, 4, 16), y.reshape(2, 4)
  )
  np.testing.assert_allclose(split[0].reshape(whole[0].shape), whole[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(split[1].reshape(whole[1].shape), whole[1], rtol=1e-4, atol=1e-4)
  for stats_whole, stats_split in ((whole[2], split[2]), (whole[3], split[3])):
    jax.tree.map(
        lambda w, s: np.testing.assert_allclose(s[0], w, rtol=1e-4, atol=1e-5),
        stats_whole,
        stats_split,
    )


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize(("name", "width"), SMALL)
def test_bfloat16_compute_with_float32_parameters_outputs_and_logits(name, width):
  model = ml_collections.ConfigDict(
      {
          "generator": name,
          "discriminator": name,
          "g": {"width": width, "num_classes": K},
          "d": {"width": width, "num_classes": K, "ac_head": True, "spectral_norm": True},
          "dtype": "bfloat16",
      }
  )
  G, D = models.build(model, axis_name=None)
  model.dtype = "float32"
  G32, D32 = models.build(model, axis_name=None)
  z, y = jax.random.normal(jax.random.PRNGKey(0), (4, 16)), jnp.arange(4) % K
  g_vars = jax.jit(lambda: G.init(jax.random.PRNGKey(1), z, train=False))()
  d_vars = jax.jit(lambda: D.init(jax.random.PRNGKey(2), IMAGES, train=False, y=LABELS))()
  assert _dtypes(g_vars) == _dtypes(d_vars) == {"float32"}  # parameters and their statistics

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def run(G, D):
    images, g_out = G.apply(
        g_vars, z, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    logits, d_out = D.apply(
        d_vars, images, train=False, y=y, mutable=["intermediates"], capture_intermediates=True
    )
    return images, logits, g_out["intermediates"], d_out["intermediates"]

  images, logits, g_inner, d_inner = run(G, D)
  images32, logits32, _, _ = run(G32, D32)
  # Every layer of G computes in bfloat16; the images leave G as float32.
  assert images.dtype == jnp.float32
  g_layers = {k: v for k, v in traverse_util.flatten_dict(g_inner).items() if k != ("__call__",)}
  assert len(g_layers) > 5 and _dtypes(g_layers) == {"bfloat16"}, _dtypes(g_layers)
  np.testing.assert_allclose(images, images32, atol=0.05)  # bfloat16: ~3 significant digits
  # D's convolutions compute in bfloat16, its head in float32.
  d_layers = traverse_util.flatten_dict(d_inner)
  convs = [v for k, v in d_layers.items() if "conv" in "/".join(k) and k[-1] == "__call__"]
  assert convs and _dtypes(convs) == {"bfloat16"}
  assert _dtypes(logits) == {"float32"}  # real/fake and class logits
  for got, want in zip(logits, logits32, strict=True):
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(want))))


def test_bfloat16_is_refused_by_networks_without_a_dtype():
  model = ml_collections.ConfigDict(
      {"generator": "dcgan28", "discriminator": "dcgan28", "g": {}, "d": {}, "dtype": "bfloat16"}
  )
  with pytest.raises(models.ConfigError, match="dcgan28.*float32 only"):
    models.build(model, axis_name=None)
  model.dtype = "float16"
  with pytest.raises(models.ConfigError, match="unknown model.dtype"):
    models.build(model, axis_name=None)
