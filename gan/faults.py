"""Named points where a test can kill the process, to test what a kill there leaves behind.

`point(name)` is called at moments where a kill matters (a checkpoint just
saved, a rollback half done, a run file half written). It does nothing unless
$JAXGAN_KILL_AT names the point, as `name` or `name@k` (its k-th visit,
counting from 1), in which case the process kills itself with SIGKILL there:
what `kill -9` would do, at a chosen moment instead of by timing luck. A
suffix `:TERM` or `:INT` sends that signal instead (a preemption, a Ctrl-C).
`tests/test_faults.py` resumes such runs and compares them with uninterrupted
ones.
"""

from __future__ import annotations

import collections
import os
import signal

_TARGET = os.environ.get("JAXGAN_KILL_AT", "")
_visits: collections.Counter[str] = collections.Counter()


def point(name: str) -> None:
  """Kills this process here if $JAXGAN_KILL_AT names this point (and visit)."""
  if not _TARGET:
    return
  _visits[name] += 1
  target, _, rest = _TARGET.partition("@")
  visit, _, signame = rest.partition(":")
  if target == name and _visits[name] == int(visit or 1):
    os.kill(os.getpid(), getattr(signal, f"SIG{signame or 'KILL'}"))
