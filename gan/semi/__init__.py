"""Semi-supervised methods' maths and settings: a classifier learns from few labels.

  improved_gan   Salimans et al. 2016: D is a K+1-class classifier (`gan.semi.improved_gan`)
  triple_gan     Li et al. 2017: classifier C, conditional G and pair discriminator D
                 (`gan.semi.triple_gan`; C is `config.model.classifier`)

They plug into training as methods (`gan.methods`), which add the labelled
subset to the data on the devices and report the classifier's test error
(the "test_error" evaluator). Settings live in `config.semi` (`defaults()`).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np

from gan import data as data_lib
from gan.semi import labels


def defaults() -> ml_collections.ConfigDict:
  """The default `config.semi`."""
  return ml_collections.ConfigDict(
      {
          "labels_per_class": 10,
          # The labelled subset's seed, apart from config.seed (the networks' initialisation
          # and the training trajectory), so each can be varied on its own. 0 picks the
          # subset that runs with config.seed = 0 had when the one seed picked both.
          "label_seed": 0,
          "unlabelled_weight": 1.0,
          "classifier_ema_decay": 0.999,
          "init_batch": 500,  # images for the data-dependent initialisation
          "num_classes": 10,
          # Triple-GAN: D's weight on classifier-labelled pairs (1 - alpha on generated
          # ones), and the pseudo-label term R_P's weight and first step.
          "alpha": 0.5,
          "alpha_p": 0.1,
          "pseudo_start_step": 0,
          # Triple-GAN: C's entropy and class-balance regularisers on unlabelled data.
          "entropy_weight": 0.0,
          "balance_weight": 0.0,
          # Triple-GAN options for CIFAR-10 (`gan.semi.triple_gan`), all off by default:
          # the scale of C's adversarial term, the Pi-model consistency term and its ramp-up
          # (in epochs of steps_per_epoch steps), a DiffAugment policy for C's inputs, ZCA
          # whitening as C's first layer (fitted on zca_images training images, 0: all) and
          # a trunk shared by C and D.
          "adversarial_scale": 1.0,
          "consistency_weight": 0.0,
          "consistency_rampup_epochs": 0,
          "steps_per_epoch": 1,
          "classifier_augment": "",
          "zca": False,
          "zca_images": 0,
          "shared_trunk": False,
          # With shared_trunk: the weight of L_D's gradient on the trunk (C's loss has 1).
          "trunk_d_weight": 1.0,
          # Triple-GAN options that follow the authors' code (`gan.semi.triple_gan`; the
          # defaults keep the paper's method): global batch sizes, 0 for config.batch_size,
          # of C's labelled batch and of the generated one (G's, D's and R_P's); D's own
          # real pairs, `labelled` labelled ones (0: C's labelled batch) and `unlabelled`
          # images labelled by C's argmax (0: none); C's adversarial term ("reinforce" or
          # "argmax"); the order of the updates ("dcg" or "dgc", R_P then on fresh pairs of
          # the new G); weight decay on C's output layer; C's EMA of its batch-norm
          # statistics too.
          "batches": {"labelled": 0, "generated": 0},
          "d_batches": {"labelled": 0, "unlabelled": 0},
          "adversarial": "reinforce",
          "update_order": "dcg",
          "classifier_weight_decay": 0.0,
          "classifier_ema_stats": False,
          # Triple-GAN: C trained alone for `steps` steps before the game
          # (`gan.semi.triple_gan.pretrain`; 0: off), as the paper's MNIST code does.
          "pretrain": {
              "steps": 0,
              "unlabelled_batch": 500,
              "lr": 3e-4,
              "b1": 0.9,
              "entropy_weight": 0.3,
              "balance_weight": 0.3,
              "weight_decay": 0.0,  # on C's output layer, as `classifier_weight_decay`
          },
      }
  )


def label_seed(config: ml_collections.ConfigDict) -> int:
  """The labelled subset's seed: `config.semi.label_seed` (None, in older configs: config.seed)."""
  seed = config.semi.get("label_seed")
  return config.seed if seed is None else int(seed)


def labelled_batches(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The global sizes of the batches a step draws from the labelled subset.

  The classifier's (`semi.batches.labelled`, default `config.batch_size`) and,
  for a Triple-GAN D with its own labelled batch, D's (`semi.d_batches.labelled`).
  """
  sizes = [config.semi.get("batches", {}).get("labelled", 0) or config.batch_size]
  if d_labelled := config.semi.get("d_batches", {}).get("labelled", 0):
    sizes.append(d_labelled)
  return tuple(sizes)


def labelled_data(
    config: ml_collections.ConfigDict, split: data_lib.Split, workdir: str, write: bool
) -> dict[str, np.ndarray]:
  """The labelled subset, as arrays to put on the devices beside the training split.

  The subset (`config.semi.labels_per_class` per class, from `label_seed`) is
  read from or written to `workdir/labelled.json`. It is tiled to a whole
  number of each labelled batch (`labelled_batches`: lcm(subset, batches)
  examples), so a step always draws full labelled batches and each epoch of
  the tiled set shows every labelled example equally often.
  """
  per_class, seed = config.semi.labels_per_class, label_seed(config)
  indices = labels.load_or_choose(workdir, split.label, per_class, seed, split.source, write)
  tiled = np.tile(indices, math.lcm(len(indices), *labelled_batches(config)) // len(indices))
  return {"labelled_image": split.image[tiled], "labelled_label": split.label[tiled]}


def eval_extra(workdir: str, results: dict[str, Any]) -> dict[str, Any]:
  """eval.json's top-level entries for a semi-supervised run: its test error and label subset.

  The test error is the "classifier" evaluator's if there is one (a run may
  score its classifier twice, averaged and raw), else any test-error evaluator's.
  """
  extra: dict[str, Any] = {"labels": labels.describe(workdir)}
  scored = [r for r in results.values() if "test_error" in r.metrics]
  if "classifier" in results and "test_error" in results["classifier"].metrics:
    scored = [results["classifier"]]
  if scored:
    extra["test_error"] = scored[0].metrics["test_error"]
  return extra
