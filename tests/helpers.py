"""Helpers shared by the tests that drive the `lottery_nb` command: run it, run it in the background, and wait
for a moment in a background run (to kill it there)."""
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from typing import Callable


def exe() -> str:
    path = shutil.which("lottery_nb")
    assert path, "the console script `lottery_nb` is not installed: pip install -e '.[dev]'"
    return path


def cli(*args, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    "Run `lottery_nb *args` to the end, capturing its output as text."
    return subprocess.run([exe(), *args], capture_output=True, text=True, timeout=timeout, **kw)


def as_in_a_terminal():
    """In the child: Ctrl-C's default action, as a command typed in a terminal has it (a test suite started in the background
    by a shell without job control inherits SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def background_cli(*args):
    "`lottery_nb *args` running in the background; killed on leaving the block if it is still running."
    proc = subprocess.Popen([exe(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    try: yield proc
    finally:
        if proc.poll() is None: proc.kill(); proc.wait(30)


def wait_until(ready: Callable[[], object], proc: subprocess.Popen, what: str, timeout: float = 120):
    "Poll `ready()` until it is true; fail if `proc` ends first or `timeout` seconds pass."
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the process ended before {what}: {proc.stderr.read()}"
        assert time.time() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(0.005)
