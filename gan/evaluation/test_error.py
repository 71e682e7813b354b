"""The test error of a semi-supervised run's classifier (`gan.semi`), on a held-out split.

Declared like the other evaluators (`config.evals.classifier =
evaluators.settings("test_error", every=500)`); it looks at the run's
classifier (inference mode: no noise, no dropout) instead of its generator:
the average of its parameters, or with `params="raw"` the raw classifier.
The split (default "test") is never used for training or for choosing the
labelled subset; the metrics are `test_error` and
`test_accuracy` (fractions) and `test_errors` (a count), the protocol stamp
names the split, its size and the classifier's parameters, and the details
give the errors per true class and the most frequent confusions (true class,
predicted class, count): a run whose error stalls often owes most of it to
one confusion (a style of digit its few labels do not show).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from gan import data as data_lib
from gan.evaluation.views import Classifier, Result
from gan.utils import ConfigError

TARGETS = {"ema": "classifier", "raw": "classifier_raw"}  # the views of `cfg.params`


class TestErrorEvaluator:
  """Error rate of the run's classifier on `cfg.split` of the training dataset."""

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    self.name, self.cfg = name, cfg
    params = cfg.get("params", "ema")
    if params not in TARGETS:
      raise ConfigError(f"evals.{name}.params={params!r}; use one of {sorted(TARGETS)}")
    self.target = TARGETS[params]  # what the loop hands to `run` (a views.Classifier)
    split = data_lib.load(config.dataset, cfg.split, config.data_dir)
    self.images, self.labels, self.source = split.image, split.label, split.source

  @property
  def every(self) -> int:
    return self.cfg.every

  def run(self, classifier: Classifier) -> Result:
    logits = classifier.logits(self.images, self.cfg.batch_size)
    predicted = np.argmax(logits, axis=1)
    errors = int(np.count_nonzero(predicted != self.labels))
    values = {
        "test_error": errors / len(self.labels),
        "test_accuracy": 1.0 - errors / len(self.labels),
        "test_errors": errors,
    }
    protocol = {
        "split": self.source,
        "num_examples": int(len(self.labels)),
        "classifier": classifier.kind,
        "step": classifier.step,
    }
    return Result(values, protocol, confusions(self.labels, predicted, logits.shape[1]))


def confusions(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int, top: int = 5
) -> dict[str, list]:
  """Errors per true class (of `num_classes`) and the `top` most frequent confusions."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predicted), 1)
  per_class = matrix.sum(axis=1) - np.diag(matrix)
  np.fill_diagonal(matrix, 0)
  order = np.argsort(-matrix, axis=None, kind="stable")[:top]
  pairs = [
      {"true": int(t), "predicted": int(p), "count": int(matrix[t, p])}
      for t, p in zip(*np.unravel_index(order, matrix.shape), strict=True)
      if matrix[t, p]
  ]
  return {"errors_per_class": per_class.tolist(), "top_confusions": pairs}
