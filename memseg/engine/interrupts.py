"""Stopping a training run cleanly: Ctrl-C and SIGTERM end the step under way, the last completed step is
saved, and the note says how to go on (the flag on the command line, the argument in the Python API);
a full disk while saving says which checkpoint is kept."""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from pathlib import Path
from typing import Callable


class StopRequest:
    """Set by the SIGINT/SIGTERM handler of :func:`stop_after_step`."""

    requested = False


@contextlib.contextmanager
def stop_after_step():
    """While the training loop runs, Ctrl-C (SIGINT) and SIGTERM (``kill``, ``docker stop``, a job
    scheduler) ask it to stop after the step under way, so ``train`` can save that step; a second
    signal interrupts at once. Signals that were ignored stay ignored; outside the main thread
    (where handlers cannot be set) nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True

    previous = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def go_on(wording: str, what: str) -> str:
    """How to resume (``what="resume"``) or start over (``"overwrite"``): the flag for the command line
    (``wording="cli"``), the argument for the Python API."""
    return f"--{what}" if wording == "cli" else f"{what}=True"


def with_kept_checkpoint(err: OSError, ckpt_path: Path, saved: int, wording: str = "api") -> OSError:
    """A full disk (``ENOSPC``) while writing a checkpoint: the error, also saying which checkpoint is kept (the
    failed write replaced nothing) and how to go on. Any other error is returned as it is."""
    if err.errno != errno.ENOSPC:
        return err
    if saved > 0:
        kept = (f"the last good checkpoint {ckpt_path} (step {saved}) is kept: free some space, then continue with "
                f"{go_on(wording, 'resume')}")
    else:
        kept = f"no checkpoint had been written yet: free some space and start again with {go_on(wording, 'overwrite')}"
    return OSError(errno.ENOSPC, f"{err.strerror}; {kept}", err.filename)


def checkpoint_on_interrupt(done: int | None, saved: int, steps: int, ckpt_path: Path,
                             checkpoint: Callable[[int], Path], log: Callable[[str], None],
                             wording: str = "api") -> None:
    """Ctrl-C: save last.pt at the last completed step (when it is newer than the saved one) and say how to go on.

    ``done`` is None when the interrupt came in the middle of a step (a second Ctrl-C, or one raised
    by code): the state is then half a step and is not saved, the previous checkpoint stands.
    """
    if done is not None and done > saved:
        checkpoint(done)
        note = f"saved {ckpt_path} at step {done}"
    elif saved > 0:
        note = f"{ckpt_path} holds step {saved}"
    else:
        log("interrupted before the first step finished: nothing to resume; start again with "
            f"{go_on(wording, 'overwrite')}")
        return
    same = "the same --out" if wording == "cli" else "the same config (out)"
    log(f"interrupted: {note} of {steps}; continue with {go_on(wording, 'resume')} and {same}")
