"""SIGTERM -> a checkpoint at the next step boundary, the same step on every host.

Preempted TPU VMs and SLURM jobs get SIGTERM some seconds before they are killed. The loop asks
`Watch.reached(step)` after every step; when it says yes, the trainer saves a checkpoint of that
step and exits with errors.PREEMPTED_EXIT_CODE, so rerunning the same command loses no step.

Several processes: JAX's own preemption service (started by jax.distributed.initialize) catches
SIGTERM on any host, tells the others, and picks the step every host saves at;
`multihost_utils.reached_preemption_sync_point` is how a host asks. One process has no such
service (the call always says no), so a Python signal handler notes the signal instead.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Watch:
    """Watches for SIGTERM from its creation until `close()`: open it around the step loop.

    Before and after, SIGTERM keeps its default action (the process ends): before the first step
    and after the last there are no unsaved steps to lose.
    """

    def __init__(self):
        self._multi = jax.process_count() > 1
        self._signalled = threading.Event()
        self._previous = None
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook's
        # worker thread) SIGTERM keeps its default action.
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled.set()

    def reached(self, step: int) -> bool:
        """Must the run save at `step` and stop? Every host calls this at every step."""
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled.is_set()
