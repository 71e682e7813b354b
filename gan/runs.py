"""Reading a run's workdir after (or during) training: its config, checkpoints and generator.

The library behind `gan.evaluate` and `gan.sample`. A checkpoint is
restored without rebuilding the training state (no dataset is loaded): only
the generator's parameters, its EMA and batch statistics are needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from typing import IO, Any

import ml_collections
import numpy as np

from gan import checkpoint, methods, models, utils, writers
from gan import data as data_lib
from gan.evaluation import evaluators, views
from gan.utils import ConfigError

STOPPED = "stopped.json"  # a run the health monitor stopped (`gan.loop.RunStoppedError`)
LOCK = ".lock"  # held by the process training in the workdir (`lock_workdir`)
# Keys that may differ when a run resumes: its length, cadences, evaluation and where
# things are, not what is trained or how. Anything else is refused (`gan.build.check_resumable`).
RESUMABLE_CHANGES = (
    "num_steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_samples",
    "evals",
    "best_checkpoint",
    "data_dir",
    "parallel",
    "sweep",
)


def lock_workdir(workdir: str) -> IO | None:
  """Takes `workdir`'s lock for this process, or raises ConfigError naming its holder.

  The lock is an flock on `workdir/.lock`, which the kernel releases when its
  process dies, so a killed run's lock is taken over by the next one. Where the
  file system has no flock (some network file systems) the run goes on unlocked,
  with a warning. Close the returned file to release the lock.
  """
  path = os.path.join(workdir, LOCK)
  f = open(path, "a+")  # noqa: SIM115  (held open for the run: the lock lives with the file)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise ConfigError(
        f"{workdir} is in use by {holder}; wait for it to end or use another --workdir"
    ) from None
  except OSError as e:
    print(f"warning: cannot lock {path} ({e}); going on without", file=sys.stderr, flush=True)
    f.close()
    return None
  f.seek(0)
  f.truncate()
  f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  return f


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir!r} is not a run directory: no config.json in it")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def checkpointer(
    workdir: str, config: ml_collections.ConfigDict, read_only: bool = False
) -> checkpoint.Checkpointer:
  best = config.get("best_checkpoint") or {}
  return checkpoint.Checkpointer(
      workdir,
      config.keep_checkpoints,
      best_metric=best.get("metric"),
      best_mode=best.get("mode", "min"),
      keep_best=best.get("keep", 1),
      read_only=read_only,
  )


def resolve_step(ckpt: checkpoint.Checkpointer, which: str) -> int:
  """ "latest", "best" or a step number -> a step that exists on disk."""
  steps = ckpt.all_steps()
  if not steps:
    raise ConfigError(f"no checkpoint in {ckpt.directory}")
  if which == "latest":
    return ckpt.latest_step()
  if which == "best":
    step = ckpt.best_step()
    if step is None:
      raise ConfigError(
          "no best checkpoint: the run tracks none (config.best_checkpoint.metric) or none was "
          "evaluated yet; use --checkpoint=latest or a step"
      )
    return step
  if not which.isdigit() or int(which) not in steps:
    raise ConfigError(f"--checkpoint={which!r}: use 'latest', 'best' or one of the steps {steps}")
  return int(which)


def _restore(workdir: str, which: str) -> tuple[Any, ml_collections.ConfigDict]:
  """The state of checkpoint `which` in `workdir` (as restored: nested dicts), and the config."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir)
  ckpt = checkpointer(workdir, config, read_only=True)
  try:
    state = ckpt.restore(None, resolve_step(ckpt, which))
  finally:
    ckpt.close()
  return state, config


def read_metric(eval_json: dict[str, Any], metric: str) -> float:
  """`metric` ("key" or "evaluator/key") from a run's eval.json record."""
  node: Any = eval_json
  for part in metric.split("/"):
    if not isinstance(node, dict) or part not in node:
      raise ConfigError(f"eval.json has no {metric!r}; it holds {sorted(eval_json)}")
    node = node[part]
  return float(node)


def load_generator(
    workdir: str, which: str = "latest", use_ema: bool = True
) -> tuple[evaluators.Generator, ml_collections.ConfigDict]:
  """The generator of checkpoint `which` in `workdir`, and the run's config."""
  state, config = _restore(workdir, which)
  G, _ = models.build(config.model, axis_name=None)
  return evaluators.Generator(G, state, config.model.z_dim, use_ema), config


def make_views(
    config: ml_collections.ConfigDict,
    method: methods.GAN,
    nets: methods.Networks,
    state: Any,
    use_ema: bool = True,
) -> dict[str, Any]:
  """What the evaluators look at: the generator, and the method's classifier if it has one
  (its average, "classifier", and the raw one, "classifier_raw")."""
  generator = evaluators.Generator(nets.G, state, config.model.z_dim, use_ema)
  found = {"generator": generator}
  classifier = method.classifier(nets, state)
  if classifier is not None:
    found["classifier"] = views.Classifier(*classifier, generator.step, "ema")
    raw = method.classifier(nets, state, average=False)
    found["classifier_raw"] = views.Classifier(*raw, generator.step, "raw")
  return found


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """config.json: the run's whole config, as the experiment file and flags made it."""
  utils.write_json(os.path.join(workdir, "config.json"), config.to_dict(), indent=2, sort_keys=True)


def write_eval_json(
    workdir: str, step: int, checkpoint_name: str, results, extra: dict[str, Any] | None = None
) -> str:
  """eval.json: {"step", "checkpoint", <eval name>: {<metric>: value, "protocol": {...}}}.

  An evaluator with details (the test error's confusions) adds "details": {...} beside
  its "protocol".

  `extra` adds top-level entries (semi-supervised runs: "test_error" and "labels").
  """
  path = os.path.join(workdir, "eval.json")
  record = {"step": step, "checkpoint": checkpoint_name, **(extra or {})}
  record |= evaluators.as_json(results)
  utils.write_json(path, record, indent=2)
  return path


def evaluate(
    workdir: str,
    which: str = "latest",
    raw: bool = False,
    num_samples: int | None = None,
    with_inception: bool = False,
) -> dict[str, Any]:
  """Scores checkpoint `which` of the run in `workdir`; writes and returns eval.json.

  Uses the evaluators of the run's config, or, if it declares none, the
  default ones of its dataset (`evaluators.default_evals`); `with_inception`
  adds an "inception" evaluator (FID etc.) with its default settings if the
  config has none, and makes the config's own ones required (missing weights
  are then an error, not a warning).
  """
  state, config = _restore(workdir, which)
  method = methods.get(config)
  found = make_views(config, method, methods.build_networks(config, None), state, not raw)
  evals = config.get("evals") or evaluators.default_evals(config.dataset)
  evals = ml_collections.ConfigDict(evals if isinstance(evals, dict) else evals.to_dict())
  if with_inception and data_lib.is_points(config.dataset):
    raise ConfigError("--inception scores images; this run generates 2D points")
  if with_inception and not any(e.kind == "inception" for e in evals.values()):
    evals.inception = evaluators.settings("inception")
  for cfg in evals.values():
    if with_inception and cfg.kind == "inception":
      cfg.optional = False
  if num_samples:
    for cfg in evals.values():
      cfg.num_samples = num_samples
  with config.unlocked():
    config.evals = evals
  results = evaluators.run_all(evaluators.build(config), found)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  extra = method.eval_extra(workdir, results)
  step = found["generator"].step
  path = write_eval_json(workdir, step, which, results, extra)
  with open(path) as f:
    return json.load(f)


def write_samples(
    workdir: str,
    num: int,
    out: str,
    which: str = "latest",
    raw: bool = False,
    seed: int = 0,
    label: int | None = None,
) -> dict[str, np.ndarray]:
  """Writes `num` generator samples of checkpoint `which` to the .npz `out` (see gan.sample).

  A conditional generator's samples get their classes as `y` (sample i of class
  i mod K, or all of class `label`).
  """
  generator, _ = load_generator(workdir, which, use_ema=not raw)
  outputs = generator.outputs(num, seed, label=label)
  arrays = {"x": outputs.astype(np.float32) if outputs.ndim == 2 else writers.to_uint8(outputs)}
  labels = generator.labels(num, label)
  if labels is not None:
    arrays["y"] = labels
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez_compressed(out, **arrays, step=generator.step, generator=generator.kind)
  return arrays
