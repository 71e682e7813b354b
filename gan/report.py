"""A run's health report: `python -m gan.report WORKDIR` writes WORKDIR/report.html and summary.png.

The page is self-contained (plots and sample grids embedded as PNG data): loss,
accuracy, gradient and health-signal curves with the monitor's events marked on
the timeline, the evaluators' metric curves, a strip of sample grids over
training, the best checkpoint and why it was chosen, and a one-paragraph
verdict. `summary.png` is the same at a glance, for terminals and notebooks.
Reads only the workdir (metrics.jsonl, events.jsonl, config.json, samples/,
checkpoints/); it can run while training goes on.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import json
import os
import sys
from typing import Any

import numpy as np

from gan import health, utils, writers

# Training-signal panels: (title, metric keys, log scale).
PANELS = (
    ("losses", ("d/loss", "g/loss"), False),
    (
        "D accuracy and D(x), D(G(z))",
        ("d/real_acc", "d/fake_acc", "d/real_prob", "d/fake_prob"),
        False,
    ),
    ("gradient norms", ("d/grad_norm", "g/grad_norm"), True),
    ("update / parameter norm", ("d/update_ratio", "g/update_ratio"), True),
    ("diversity (generated / real spread in D's features)", ("health/diversity",), False),
    ("largest singular value of D's layers", ("health/d_sigma_max",), True),
)
_COLORS = {"divergence": "tab:red", "discriminator_wins": "tab:orange"}
_COLORS |= {"mode_collapse": "tab:purple", "plateau": "tab:green"}


def series(records: list[dict[str, float]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per metric, (steps, values) of the surviving trajectory (the last record of each step wins,
  so the branch a rollback abandoned is dropped)."""
  by_step: dict[int, dict[str, float]] = {}
  for record in records:
    by_step.setdefault(int(record["step"]), {}).update(record)
  out: dict[str, tuple[list[int], list[float]]] = {}
  for step in sorted(by_step):
    for key, value in by_step[step].items():
      if key not in ("step", "wall_time", "start_time"):
        out.setdefault(key, ([], []))
        out[key][0].append(step)
        out[key][1].append(value)
  return {k: (np.asarray(s), np.asarray(v, np.float64)) for k, (s, v) in out.items()}


def load(workdir: str) -> dict[str, Any]:
  """Everything the report shows, read from the workdir."""
  config = {}
  if os.path.exists(os.path.join(workdir, "config.json")):
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  records = (
      writers.read_metrics(workdir)
      if os.path.exists(os.path.join(workdir, "metrics.jsonl"))
      else []
  )
  samples = sorted(glob.glob(os.path.join(workdir, "samples", "step_*.png")))
  return {
      "workdir": os.path.abspath(workdir),
      "config": config,
      "series": series(records),
      "events": health.read_events(workdir),
      "samples": samples,
      "best": _best(workdir, config),
  }


def _best(workdir: str, config: dict[str, Any]) -> dict[str, Any]:
  best = config.get("best_checkpoint") or {}
  metric, mode = best.get("metric") or None, best.get("mode", "min")
  steps = sorted(
      int(os.path.basename(p))
      for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
      if os.path.basename(p).isdigit()
  )
  out: dict[str, Any] = {"metric": metric, "mode": mode, "checkpoints": steps, "step": None}
  if not metric:
    return out
  by_metric = series(writers.read_metrics(workdir)) if steps else {}
  if metric in by_metric:
    s, v = by_metric[metric]
    kept = [(step, value) for step, value in zip(s, v, strict=True) if step in steps]
    if kept:
      pick = min if mode == "min" else max
      out["step"], out["value"] = pick(kept, key=lambda sv: sv[1])
      out["history"] = list(zip(s.tolist(), v.tolist(), strict=True))
  return out


def verdict(report: dict[str, Any]) -> str:
  """One paragraph: healthy, or which failure, when, and what was done."""
  events = [e for e in report["events"] if e["action"] != health.CLEARED]
  series = report["series"]
  last = int(max((s[-1] for s, _ in series.values()), default=0))
  failures = [e for e in events if e["detector"] != "plateau"]
  ended = _ended(report["events"])
  stops = [e for e in events if e["detector"] == "plateau" and e["action"] != "rollback"]
  stop_note = (
      f" Stopped at step {stops[0]['step']:,}: {stops[0]['message']} (the best checkpoint is kept)."
      if stops
      else ""
  )
  if not failures:
    return f"Healthy: no detector fired in {last:,} steps." + stop_note
  parts = []
  for name in health.DETECTORS:
    fired = [e for e in failures if e["detector"] == name]
    if fired:
      first = fired[0]
      steps = ", ".join(f"{e['step']:,}" for e in fired[:5]) + (" ..." if len(fired) > 5 else "")
      actions = sorted({e["action"] for e in fired})
      still = [e for e in fired if e["action"] == "log" and id(e) not in ended]
      closed = [ended[id(e)] for e in fired if id(e) in ended]
      note = ""
      if still:
        note = f"; open since step {still[-1]['step']:,}"
      elif closed:
        step, how = max(closed)
        note = f"; {how} {'by' if len(closed) > 1 else 'at'} step {step:,}"
      parts.append(
          f"{name.replace('_', ' ')} at step{'s' if len(fired) > 1 else ''} {steps} "
          f"(first: {first['message']}; action: {', '.join(actions)}{note})"
      )
  stopped = any(e["action"] in ("stop", "early_stop") for e in failures)
  open_warnings = [e for e in failures if e["action"] == "log" and id(e) not in ended]
  rollbacks = [e["step"] for e in events if e["action"] == "rollback"]
  if not stopped and not open_warnings and not rollbacks:
    return f"Healthy at step {last:,}: every warning has cleared. Warned: {'; '.join(parts)}." + (
        stop_note
    )
  if not stopped and not open_warnings:
    later = any(e["step"] > max(rollbacks) for e in failures)
    text = (
        f"Recovered: {'; '.join(parts)}. After the last rollback the run trained on to step "
        f"{last:,} with {'no warning left open' if later else 'no further event'}"
    )
    num_steps = report["config"].get("num_steps")
    if num_steps and last < num_steps:
      text += f" (it has not reached its end, step {num_steps:,}, yet)"
    return text + "." + stop_note
  text = f"Unhealthy after {last:,} steps: " + "; ".join(parts) + "."
  return text + (" The run was stopped." if stopped else stop_note)


def _ended(events: list[dict[str, Any]]) -> dict[int, tuple[int, str]]:
  """{id(event): (step, how)} for the logged episodes that ended ("cleared", "rolled back").

  A `cleared` record closes the open episodes of its detector test (records
  written before tests were named count as the detector's; a test that fired
  again, e.g. after a crash and resume, has several); a rollback closes every
  open episode, since the monitor forgets them and fires again if the trouble
  persists.
  """
  open_by_test: dict[str, list[dict[str, Any]]] = {}
  ended: dict[int, tuple[int, str]] = {}
  for event in events:
    test = event.get("test") or event["detector"]
    if event["action"] == health.CLEARED:
      for warning in open_by_test.pop(test, []):
        ended[id(warning)] = (int(event["step"]), "cleared")
    elif event["action"] == "rollback":
      for warnings in open_by_test.values():
        for warning in warnings:
          ended[id(warning)] = (int(event["step"]), "rolled back")
      open_by_test.clear()
    elif event["action"] == "log":
      open_by_test.setdefault(test, []).append(event)
  return ended


def _figure(report: dict[str, Any], keys_panels, columns: int = 3, width: float = 4.2):
  # A bare Figure, not pyplot: it draws with Agg whatever the backend, and pyplot's backend
  # stays the caller's (matplotlib.use("Agg") here would stop a notebook's inline plots).
  from matplotlib.figure import Figure  # noqa: PLC0415

  rows = max(1, -(-len(keys_panels) // columns))
  fig = Figure(figsize=(width * columns, 2.8 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat[len(keys_panels) :]:
    ax.axis("off")
  for ax, (title, keys, log) in zip(axes.flat, keys_panels, strict=False):
    for key in keys:
      if key in report["series"]:
        steps, values = report["series"][key]
        ax.plot(steps, values, label=key, lw=1, marker="o" if len(steps) < 20 else None, ms=3)
    for event in report["events"]:
      style = ":" if event["action"] == health.CLEARED else "--"  # dotted: an episode's end
      ax.axvline(event["step"], color=_COLORS.get(event["detector"], "k"), ls=style, lw=0.8)
    if log and any((np.asarray(line.get_ydata()) > 0).any() for line in ax.lines):
      ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.lines:
      ax.legend(fontsize=6, loc="best")
  fig.tight_layout()
  return fig


def _png(fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
  return buffer.getvalue()


def _img(data: bytes, alt: str, width: int | None = None) -> str:
  size = f' width="{width}"' if width else ""
  encoded = base64.b64encode(data).decode()
  return f'<img alt="{html.escape(alt)}"{size} src="data:image/png;base64,{encoded}">'


def _metric_panels(report: dict[str, Any]) -> list[tuple[str, tuple[str, ...], bool]]:
  evals = (report["config"].get("evals") or {}).keys()
  tracked = report["best"].get("metric")
  keys = [k for name in sorted(evals) for k in sorted(report["series"]) if k.startswith(f"{name}/")]
  keys.sort(key=lambda k: k != tracked)  # the metric that picks the best checkpoint first
  return [(key, (key,), False) for key in keys]


def _sample_strip(samples: list[str], count: int = 8) -> list[str]:
  if len(samples) <= count:
    return samples
  picks = np.linspace(0, len(samples) - 1, count).round().astype(int)
  return [samples[i] for i in sorted(set(picks.tolist()))]


def write(workdir: str, report: dict[str, Any] | None = None) -> tuple[str, str]:
  """Writes report.html and summary.png into `workdir` (of `report`, default `load(workdir)`);
  returns their paths."""
  report = load(workdir) if report is None else report
  text = verdict(report)
  training = [p for p in PANELS if any(k in report["series"] for k in p[1])]
  metric_panels = _metric_panels(report)

  glance = [p for p in training if p[0] != "update / parameter norm"][:4] + metric_panels[:2]
  summary = _figure(report, glance)
  summary.suptitle(_wrap(text, 150), fontsize=8, y=1.0, va="bottom")
  summary_png = _png(summary)
  summary_path = os.path.join(workdir, "summary.png")
  with open(summary_path, "wb") as f:
    f.write(summary_png)

  parts = [
      "<!doctype html><meta charset='utf-8'>",
      f"<title>jaxgan report: {html.escape(report['workdir'])}</title>",
      "<style>body{font-family:sans-serif;max-width:1300px;margin:auto}"
      "td,th{padding:2px 8px;text-align:left}.v{font-size:1.1em;padding:8px;"
      "background:#f4f4f4}</style>",
      f"<h1>Run report</h1><p>{html.escape(report['workdir'])}</p>",
      f"<p class='v'><b>Verdict.</b> {html.escape(text)}</p>",
      "<h2>Training signals</h2>",
      "<p>Dashed lines: detector events (red divergence, orange discriminator wins, "
      "purple mode collapse, green plateau); dotted: a logged episode's end (cleared).</p>",
      _img(_png(_figure(report, training)), "training signals") if training else "",
  ]
  if metric_panels:
    parts += ["<h2>Evaluation metrics</h2>", _img(_png(_figure(report, metric_panels)), "metrics")]
  parts += ["<h2>Events</h2>", _events_table(report["events"])]
  parts += ["<h2>Best checkpoint</h2>", _best_html(report["best"])]
  strip = _sample_strip(report["samples"])
  if strip:
    parts.append("<h2>Samples over training</h2><div>")
    for path in strip:
      with open(path, "rb") as f:
        step = int(os.path.basename(path)[5:-4])
        parts.append(
            f"<figure style='display:inline-block;margin:4px'>{_img(f.read(), path, 150)}"
            f"<figcaption>step {step:,}</figcaption></figure>"
        )
    parts.append("</div>")
  html_path = os.path.join(workdir, "report.html")
  with open(html_path, "w") as f:
    f.write("\n".join(parts))
  return html_path, summary_path


def _wrap(text: str, width: int) -> str:
  import textwrap  # noqa: PLC0415

  return "\n".join(textwrap.wrap(text, width))


def _events_table(events: list[dict[str, Any]]) -> str:
  if not events:
    return "<p>No events.</p>"
  rows = ["<table><tr><th>step</th><th>detector</th><th>action</th><th>what</th></tr>"]
  for e in events:
    rows.append(
        f"<tr><td>{e['step']:,}</td><td>{html.escape(e['detector'])}</td>"
        f"<td>{html.escape(e['action'])}</td><td>{html.escape(e['message'])}</td></tr>"
    )
  return "".join(rows) + "</table>"


def _best_html(best: dict[str, Any]) -> str:
  kept = ", ".join(f"{s:,}" for s in best["checkpoints"]) or "none"
  if not best["metric"]:
    return f"<p>No metric tracked; the latest checkpoints are kept (steps {kept}).</p>"
  if best["step"] is None:
    metric = html.escape(best["metric"])
    return f"<p>Tracking {metric} ({best['mode']}); no evaluated checkpoint yet (kept: {kept}).</p>"
  history = ", ".join(f"{s:,}: {v:.4g}" for s, v in best.get("history", []))
  return (
      f"<p>Step {best['step']:,}: {html.escape(best['metric'])} = {best['value']:.4g}, the "
      f"{'lowest' if best['mode'] == 'min' else 'highest'} among the kept checkpoints "
      f"(kept: {kept}). All evaluations: {history}.</p>"
  )


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m gan.report WORKDIR", file=sys.stderr)
    sys.exit(2)
  workdir = argv[0]
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    utils.fail(f"{workdir!r} has no metrics.jsonl (not a run directory?)")
  report = load(workdir)
  try:
    html_path, summary_path = write(workdir, report)
  except OSError as e:  # a read-only run directory
    utils.fail(utils.describe_os_error(e))
  print(verdict(report))
  print(f"wrote {html_path} and {summary_path}")


if __name__ == "__main__":
  main()
