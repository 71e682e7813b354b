"""The notebooks in notebooks/ run top to bottom in a fresh Jupyter kernel and show their figures.

Each notebook is executed as Jupyter runs it (nbclient, the "python3" kernel of
ipykernel, working directory notebooks/), with the training runs' temporary
directories under the test's tmp_path. The kernel gets this process's environment
without conftest's four simulated devices, so a notebook runs as on a researcher's
machine; the smoke batches also divide by 4 and 8 devices. Each notebook states its
own checks in its cells (a restored checkpoint equals the returned state, the
confusion matrix agrees with the run's evaluator), so an error in any cell fails the
test. The notebooks are kept in git without outputs.
"""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
# Notebook -> the least number of figures it must show (inline PNG outputs).
FIGURES = {"explore.ipynb": 4, "semi_supervised.ipynb": 3, "sweep.ipynb": 3}


def _kernel_env(tmp_path) -> dict[str, str]:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(f for f in flags if "xla_force_host_platform_device_count" not in f)
  env["TMPDIR"] = str(tmp_path)  # where the notebooks' tempfile.mkdtemp() workdirs go
  return env


def _outputs(nb, kind: str) -> list[str]:
  """The text of every `kind` output ("stdout", "image/png", "text/markdown") of `nb`."""
  found = []
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream" and output.name == kind:
        found.append(output.text)
      elif kind in output.get("data", {}):
        found.append(output.data[kind])
  return found


def test_every_notebook_is_tested_and_stored_without_outputs():
  names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
  assert names == sorted(FIGURES)
  for name in names:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), name
    # Step one configures XLA, which it reads once, before JAX starts.
    assert "platform.configure_xla()" in code[0].source, name


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_shows_its_figures(name, tmp_path):
  before = sorted(os.listdir(NOTEBOOKS))
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  client = NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
  )
  client.execute(env=_kernel_env(tmp_path))  # raises CellExecutionError if a cell fails

  assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert len(_outputs(nb, "image/png")) >= FIGURES[name]
  assert sorted(os.listdir(NOTEBOOKS)) == before  # nothing written into the repository
  stdout = "".join(_outputs(nb, "stdout"))
  assert f"workdir: {tmp_path}" in stdout
  if name == "explore.ipynb":
    assert "trained to step 600" in stdout
    assert re.search(r"^(Healthy|Recovered|Unhealthy)", stdout, re.MULTILINE)
  elif name == "semi_supervised.ipynb":
    assert "100 labelled images" in stdout
    # The demonstration run learns from its 100 labels (86% here; chance is 10%).
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", stdout).group(1))
    assert accuracy > 50.0
  elif name == "sweep.ipynb":
    (table,) = _outputs(nb, "text/markdown")
    assert len(table.splitlines()) == 2 + 8  # header, separator, one row per member
    assert "success rate" in stdout
