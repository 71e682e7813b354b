"""Devices: the per-backend choices, evaluation sharded over devices, and tests on an accelerator.

The choices (`gan.platform.choices`) and the sharded feature extraction are
tested here on the suite's simulated CPU devices. The accelerator tests
(`test_on_accelerator`) select the accelerator explicitly and are skipped,
with a reason, where there is none: the rest of the suite runs on simulated
CPU devices (tests/conftest.py forces the CPU platform), so each of them runs
one case of this file in a fresh process without that forcing, where JAX
starts its default backend, and the case runs if that is an accelerator:

  python -m pytest tests/test_devices.py -v      # on a GPU host (here: skipped)
  PYTHONPATH=. python tests/test_devices.py CASE               # one case, in this process
  PYTHONPATH=. python tests/test_devices.py CASE --allow-cpu   # its code on a CPU (a dry run)

Tolerances: the accelerator's step equals the CPU's to rtol 1e-3 in its
metrics, with matrix products at "highest" precision (no TF32). With
`deterministic=True` a resumed run is bit-identical to an uninterrupted one and
two runs are bit-identical to each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import jax
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from experiments import cifar10, mnist, toy2d
from gan import build, data, methods, models, platform, population, train
from gan import state as state_lib
from gan import step as step_lib
from gan.evaluation import sharded
from gan.models import layers
from gan.parallel import Layout, replicate, unreplicate
from gan.utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900


# The per-backend choices, held to the backend.


@pytest.mark.parametrize("backend", ["gpu", "cuda", "rocm", "tpu"])
def test_accelerators_get_stock_behaviour(backend):
  chosen = platform.choices(backend)
  assert chosen.xla_flags == () and not any(f.startswith("--xla_cpu") for f in chosen.xla_flags)
  assert not chosen.conv_chunk and not chosen.custom_conv_transpose
  assert chosen.steps_in_flight is None


def test_cpu_keeps_its_measured_workarounds():
  chosen = platform.choices("cpu")
  assert chosen.xla_flags == platform.CPU_FLAGS
  assert chosen.conv_chunk and chosen.custom_conv_transpose and chosen.steps_in_flight == 2
  assert platform.current() == chosen  # the suite's backend
  assert Layout("auto").backend == "cpu"


def test_determinism_flag_only_where_needed():
  assert platform.deterministic_flags("gpu") == ("--xla_gpu_deterministic_ops=true",)
  assert platform.deterministic_flags("cuda") == platform.deterministic_flags("gpu")
  assert platform.deterministic_flags("cpu") == platform.deterministic_flags("tpu") == ()


def test_configure_xla_adds_the_backends_flags_and_keeps_the_users(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  assert platform.configure_xla(backend="gpu") == "--xla_dump_to=/tmp/x"
  assert platform.configure_xla(backend="cpu").split() == [
      "--xla_dump_to=/tmp/x",
      *platform.CPU_FLAGS,
  ]
  user = platform.CPU_FLAGS[0].split("=")[0] + "=default"
  monkeypatch.setenv("XLA_FLAGS", user)
  assert platform.configure_xla(backend="cpu") == user  # the user's value wins


def test_expected_backend_is_found_before_the_backend_starts(monkeypatch):
  monkeypatch.setattr(platform, "backend_started", lambda: False)
  monkeypatch.setattr(platform, "requested_platforms", lambda: "")
  monkeypatch.setattr(platform, "_installed_accelerators", lambda: ["gpu"])
  monkeypatch.setattr(platform, "_visible", lambda backend: True)
  assert platform.expected_backend() == "gpu"
  monkeypatch.setattr(platform, "_visible", lambda backend: False)  # plugin, but no device
  assert platform.expected_backend() == "cpu"
  monkeypatch.setattr(platform, "requested_platforms", lambda: "cuda,cpu")
  assert platform.expected_backend() == "gpu"
  monkeypatch.setattr(platform, "requested_platforms", lambda: "cpu")
  assert platform.expected_backend() == "cpu"


def test_deterministic_config_sets_the_flag_before_the_backend_starts(monkeypatch):
  config = ml_collections.ConfigDict({"deterministic": True})
  monkeypatch.setenv("XLA_FLAGS", "")
  assert platform.prepare(config).backend == "cpu"  # XLA:CPU is deterministic: no flag
  assert os.environ["XLA_FLAGS"] == ""
  monkeypatch.setattr(platform, "expected_backend", lambda: "gpu")
  monkeypatch.setattr(platform, "current", lambda: platform.choices("gpu"))
  monkeypatch.setattr(platform, "backend_started", lambda: False)
  platform.prepare(config)
  assert os.environ["XLA_FLAGS"].split() == list(platform.GPU_DETERMINISTIC_FLAGS)
  monkeypatch.setattr(platform, "backend_started", lambda: True)
  platform.prepare(config)  # started, with the flag: fine
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(ConfigError, match="xla_gpu_deterministic_ops"):
    platform.prepare(config)
  config.deterministic = False
  platform.prepare(config)


def test_step_queue_bounds_the_steps_in_flight():
  queue = platform.StepQueue(2)
  for i in range(5):
    queue.dispatched(jax.numpy.full(3, i))
    assert len(queue._pending) == 1  # the step just dispatched; the one before it finished
  unbounded = platform.StepQueue(None)
  unbounded.dispatched(jax.numpy.zeros(3))
  assert not unbounded._pending


def _conv_t_grads(x, kernel):
  layer = layers.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)
  variables = {"params": {"kernel": kernel}}
  loss = lambda v, x: jax.numpy.sum(jax.numpy.sin(layer.apply(v, x)))  # noqa: E731
  jaxpr = str(jax.make_jaxpr(loss)(variables, x))
  return jax.grad(loss, argnums=(0, 1))(variables, x), jaxpr


def test_layers_follow_the_backend(monkeypatch):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 3))
  cpu_grads, cpu_jaxpr = _conv_t_grads(x, kernel)
  calls = []
  counted = lambda v: calls.append(len(v)) or v  # noqa: E731
  layers.batch_chunked(counted, np.zeros((10, 1)), 4)
  assert calls == [4, 4, 2]
  monkeypatch.setattr(platform, "current", lambda: platform.choices("gpu"))
  gpu_grads, gpu_jaxpr = _conv_t_grads(x, kernel)
  assert "custom_vjp" in cpu_jaxpr and "custom_vjp" not in gpu_jaxpr
  ref = nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)
  ref_grads = jax.grad(lambda v, x: jax.numpy.sum(jax.numpy.sin(ref.apply(v, x))), argnums=(0, 1))(
      {"params": {"kernel": kernel}}, x
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), gpu_grads, ref_grads
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), cpu_grads, ref_grads
  )
  calls.clear()
  layers.batch_chunked(counted, np.zeros((10, 1)), 4)
  assert calls == [10]


# Evaluation sharded over the (simulated) devices.


def _features(variables, images):
  h = jax.numpy.tanh(images.reshape(images.shape[0], -1) @ variables["w"])
  return {"pool3": h, "logits": h @ variables["v"]}


def test_sharded_features_equal_one_device_features():
  rng = np.random.default_rng(0)
  variables = {
      "w": rng.normal(size=(12, 6)).astype(np.float32),
      "v": rng.normal(size=(6, 3)).astype(np.float32),
  }
  images = rng.normal(size=(10, 2, 2, 3)).astype(np.float32)
  extract = sharded.ShardedFeatures(_features, variables)
  assert len(extract.devices) == 4 and extract.batch_size(3) == 4
  out = extract(images, batch_size=3)  # batches of 4, one per device each, the last padded
  expected = jax.jit(_features)(variables, images)
  for key in ("pool3", "logits"):
    assert out[key].shape == expected[key].shape
    np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-6)


def test_streamed_statistics_reduce_over_processes():
  rng = np.random.default_rng(1)
  variables = {
      "w": rng.normal(size=(3, 5)).astype(np.float32),
      "v": rng.normal(size=(5, 2)).astype(np.float32),
  }
  images = rng.normal(size=(40, 3)).astype(np.float32)
  made = []

  def make_chunk(start, num):
    made.append((start, num))
    return images[start : start + num]

  extract = sharded.ShardedFeatures(_features, variables)
  whole = sharded.share_stats(extract, make_chunk, 40, 6, "pool3", 8, keep=15)
  assert made == [(s, min(6, 40 - s)) for s in range(0, 40, 6)]  # one process makes all chunks
  features = extract(images, 8)["pool3"].astype(np.float64)
  np.testing.assert_allclose(whole.mean, features.mean(0), rtol=1e-10)
  np.testing.assert_allclose(whole.cov, np.cov(features, rowvar=False), rtol=1e-8, atol=1e-12)
  np.testing.assert_array_equal(whole.features, features[:15].astype(np.float32))
  # Three processes: the 7 chunks are shared 2, 2, 3, so the first holds only 12 of the 15
  # kept rows; processes 2 and 1 run first and record what they send, and process 0 gathers.
  sent = {1: [], 2: []}
  for index in (2, 1):
    made.clear()

    def record(x, index=index):
      sent[index].append(x)
      return [x] * 3  # what the others send does not matter to these shares

    sharded.share_stats(extract, make_chunk, 40, 6, "pool3", 8, 15, index, 3, gather=record)
    assert [s for s, _ in made] == {1: [12, 18], 2: [24, 30, 36]}[index]
  made.clear()
  others = iter(zip(sent[1], sent[2], strict=True))
  reduced = sharded.share_stats(
      extract, make_chunk, 40, 6, "pool3", 8, 15, 0, 3, gather=lambda x: [x, *next(others)]
  )
  assert made == [(0, 6), (6, 6)] and reduced.count == 40
  np.testing.assert_allclose(reduced.mean, whole.mean, rtol=1e-12)
  np.testing.assert_allclose(reduced.cov, whole.cov, rtol=1e-10)
  np.testing.assert_array_equal(reduced.features, whole.features)  # 12 rows of 0, 3 of 1


# The accelerator tests.


def accelerator_env() -> dict[str, str]:
  """This environment without the suite's CPU forcing, and without preallocating device memory
  (two test workers may share a GPU)."""
  env = dict(os.environ)
  env.pop("JAX_PLATFORMS", None)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return env


def probe() -> tuple[str, str]:
  """(backend, devices) that JAX picks in a process without the CPU forcing."""
  code = "import jax; print(jax.default_backend()); print(jax.devices())"
  done = subprocess.run(
      [sys.executable, "-c", code],
      env=accelerator_env(),
      capture_output=True,
      text=True,
      timeout=300,
      check=True,
  )
  backend, devices = done.stdout.strip().splitlines()[-2:]
  return backend, devices


@pytest.fixture(scope="module")
def accelerator() -> str:
  backend, devices = probe()
  if backend == "cpu":
    pytest.skip(
        f"no accelerator: JAX's default backend is cpu ({devices}) in a process without the "
        "suite's CPU forcing; these tests run on a GPU or TPU host"
    )
  return backend


def _run_case(name: str) -> None:
  done = subprocess.run(
      [sys.executable, os.path.abspath(__file__), name],
      cwd=ROOT,
      env=accelerator_env(),
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
      check=False,
  )
  assert done.returncode == 0, f"case {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


# The cases, run in the subprocess on the accelerator.


def _toy_split(shape: tuple[int, ...], num: int = 128):
  rng = np.random.default_rng(0)
  return data.Split(
      image=rng.integers(0, 256, (num, *shape), dtype=np.uint8),
      label=rng.integers(0, 10, (num,), dtype=np.int32),
      source="toy",
  )


def _one_step(config, split, device, steps: int = 1):
  """`steps` steps of `config`'s mapped step on one device: (metrics of the last, final state)."""
  method = methods.get(config)
  nets = methods.build_networks(config, step_lib.AXIS)
  split, arrays = build.data(config, method, tempfile.mkdtemp(), write=False, split=split)
  state = build.initial_state(config, method, nets, split, arrays)
  layout = Layout("pmap", [device])
  step = build.train_step(method, method.step_config(config), nets, layout)
  p_state, p_data = layout.put(state), layout.put(arrays)
  for _ in range(steps):
    p_state, p_metrics = step(p_state, p_data)
  return jax.device_get(layout.first(p_metrics)), jax.device_get(layout.first(p_state))


def case_step_matches_cpu() -> None:
  """One MNIST DCGAN step on the accelerator equals the same step on the CPU."""
  config = mnist.get_config("smoke")
  split = _toy_split((28, 28, 1))
  with jax.default_matmul_precision("highest"):
    fast, fast_state = _one_step(config, split, jax.devices()[0])
    ref, ref_state = _one_step(config, split, jax.devices("cpu")[0])
  for key in ref:
    np.testing.assert_allclose(fast[key], ref[key], rtol=1e-3, atol=1e-5, err_msg=key)
  # Adam's first step moves each parameter by about +-lr, by the sign of its gradient: a
  # gradient near zero may flip sign between backends, so few parameters may differ, by <= 2 lr.
  lr = config.optim.g.lr
  for a, b in zip(
      jax.tree.leaves(fast_state.g.params), jax.tree.leaves(ref_state.g.params), strict=True
  ):
    diff = np.abs(np.asarray(a) - np.asarray(b))
    assert diff.max() <= 2.01 * lr and np.mean(diff > 1e-5) < 0.01, (diff.max(), diff.mean())


def case_resume_deterministic() -> None:
  """With deterministic=True: a resumed smoke run is bit-identical to an uninterrupted one,
  and two runs to each other."""
  split = _toy_split((28, 28, 1))
  data.load = lambda *args, **kwargs: split
  config = mnist.get_config("smoke")
  config.deterministic = True
  config.num_steps, config.checkpoint_every = 8, 4
  root = tempfile.mkdtemp()
  whole = train.train_and_evaluate(config, os.path.join(root, "a"))
  again = train.train_and_evaluate(config, os.path.join(root, "c"))
  config.num_steps = 4
  train.train_and_evaluate(config, os.path.join(root, "b"))
  config.num_steps = 8
  resumed = train.train_and_evaluate(config, os.path.join(root, "b"))
  assert int(resumed.step) == 8
  for other in (again, resumed):
    for a, b in zip(
        jax.tree.leaves((whole.g, whole.d, whole.g_ema)),
        jax.tree.leaves((other.g, other.d, other.g_ema)),
        strict=True,
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def case_bf16_32x32() -> None:
  """CIFAR-10's SNGAN networks in bfloat16 on the accelerator: float32 state, losses near
  float32's after 3 steps."""
  split = _toy_split((32, 32, 3))
  half, half_state = _one_step(cifar10.get_config("smoke,bf16"), split, jax.devices()[0], 3)
  full, _ = _one_step(cifar10.get_config("smoke"), split, jax.devices()[0], 3)
  assert {str(x.dtype) for x in jax.tree.leaves(half_state.g.params)} == {"float32"}
  for key in ("d/loss", "g/loss"):
    assert np.isfinite(half[key]), (key, half[key])
    np.testing.assert_allclose(half[key], full[key], rtol=0.05, atol=0.02, err_msg=key)


def case_sweep() -> None:
  """8 vmapped toy sweep members on the accelerator equal each member's own run."""
  config = toy2d.get_config("smoke")
  config.optim.g.decay = config.optim.d.decay = "none"
  config.sweep = ml_collections.ConfigDict(
      {"mode": "grid", "seed": tuple(range(4)), "params": {"optim/g/lr,optim/d/lr": (1e-3, 3e-3)}}
  )
  members = population.expand(config)
  assert len(members) == 8
  devices = jax.devices()[:1]
  G, D = models.build(config.model, axis_name=step_lib.AXIS)
  split = data.load(config.dataset, config.train_split)
  p_data = replicate(split.arrays(), devices)
  states = [state_lib.create(m.config, G, D, (2,), split.num_examples) for m in members]
  nets = methods.Networks(G, D)
  step = population.make_population_step(
      config, methods.get(config), nets, population.traced_keys(members)
  )
  with jax.default_matmul_precision("highest"):
    p_pop = replicate(population.create(members, states), devices)
    p_step = step_lib.pmap_step(step, devices)
    for _ in range(3):
      p_pop, _ = p_step(p_pop, p_data)
    final = jax.device_get(unreplicate(p_pop.state))
    for k, member in enumerate(members):
      member_config = member.config
      single = step_lib.pmap_step(
          step_lib.make_train_step(methods.get(member_config).step_config(member_config), G, D),
          devices,
      )
      p_state = replicate(states[k], devices)
      for _ in range(3):
        p_state, _ = single(p_state, p_data)
      ours, theirs = population.take(final, k), jax.device_get(unreplicate(p_state))
      for a, b in zip(
          jax.tree.leaves((ours.g.params, ours.d.params)),
          jax.tree.leaves((theirs.g.params, theirs.d.params)),
          strict=True,
      ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


CASES = {
    "step_matches_cpu": case_step_matches_cpu,
    "resume_deterministic": case_resume_deterministic,
    "bf16_32x32": case_bf16_32x32,
    "sweep": case_sweep,
}
DETERMINISTIC = ("resume_deterministic",)  # XLA's flags before the backend starts


@pytest.mark.parametrize("name", list(CASES))
def test_on_accelerator(accelerator, name):
  _run_case(name)


def main(argv: list[str]) -> None:
  name, allow_cpu = argv[0], "--allow-cpu" in argv[1:]
  if name in DETERMINISTIC:
    platform.configure_xla(platform.deterministic_flags(platform.expected_backend()))
  backend = jax.default_backend()
  if backend == "cpu" and not allow_cpu:
    sys.exit(f"case {name}: the default backend is cpu, not an accelerator (--allow-cpu to run)")
  print(f"case {name} on {backend}: {jax.devices()}", flush=True)
  CASES[name]()
  print(f"case {name}: passed", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
