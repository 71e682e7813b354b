"""Starts an N-process run of `gan.main` on this machine, for trying multi-host code locally.

  python -m gan.launch --num_processes 2 -- \\
      --config experiments/mnist.py:smoke --workdir /tmp/mp

Each process gets `--coordinator 127.0.0.1:PORT --num_processes N
--process_id I` (a free port unless `--port` is given); their output is
interleaved line by line with an `[I]` prefix. If one process fails, the others
are stopped, since they would otherwise wait for it in a collective until
JAX's timeouts. Stopping the launcher (Ctrl-C, SIGTERM) stops them all. On a
cluster, use the cluster's launcher instead (see the README's "Multi-host
training"); this one only starts local processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from gan import distributed

_GRACE_S = 10.0


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"{prefix}{line}")
    out.flush()
  stream.close()


def _stop(processes: list[subprocess.Popen]) -> None:
  """SIGTERM to every live process, then SIGKILL to any still alive after a grace period."""
  for p in processes:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + _GRACE_S
  for p in processes:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(
    main_args: list[str],
    num_processes: int,
    port: int | None = None,
    devices_per_process: int | None = None,
) -> int:
  """Runs `gan.main main_args` in `num_processes` local processes; returns the exit status.

  The status is 0 if all succeed, else the first failure's (a process killed
  by signal S gives 128 + S, as in a shell).
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, not {num_processes}")
  port = port or distributed.free_port()
  env = dict(os.environ)
  if devices_per_process:  # simulated CPU devices per process (testing only)
    env["XLA_FLAGS"] = " ".join(
        [env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices_per_process}"]
    ).strip()
  processes, pumps = [], []
  for i in range(num_processes):
    command = [sys.executable, "-m", "gan.main", *main_args]
    command += [f"--coordinator=127.0.0.1:{port}", f"--num_processes={num_processes}"]
    command += [f"--process_id={i}"]
    p = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    processes.append(p)
    for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
      t = threading.Thread(target=_pump, args=(stream, f"[{i}] ", out), daemon=True)
      t.start()
      pumps.append(t)

  def on_signal(signum, frame):
    del frame
    _stop(processes)
    sys.exit(128 + signum)

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    status = 0
    running = list(processes)
    while running:
      for p in list(running):
        code = p.poll()
        if code is None:
          continue
        running.remove(p)
        if code and not status:
          status = code if code > 0 else 128 - code
          print(
              f"launch: process {processes.index(p)} exited with {code}; stopping the others",
              file=sys.stderr,
              flush=True,
          )
          _stop(running)
      time.sleep(0.1)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for t in pumps:
    t.join(timeout=5.0)
  return status


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  own, main_args = argv, []
  if "--" in argv:
    split = argv.index("--")
    own, main_args = argv[:split], argv[split + 1 :]
  parser = argparse.ArgumentParser(
      description="Start an N-process gan.main run on this machine.",
      usage="python -m gan.launch --num_processes N [--port P] -- GAN_MAIN_ARGS...",
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument(
      "--devices_per_process",
      type=int,
      default=None,
      help="simulated CPU devices per process (sets XLA_FLAGS; for testing on one machine)",
  )
  args = parser.parse_args(own)
  if not main_args:
    parser.error("give gan.main's arguments after --, e.g. -- --config ... --workdir ...")
  sys.exit(launch(main_args, args.num_processes, args.port, args.devices_per_process))


if __name__ == "__main__":
  main()
