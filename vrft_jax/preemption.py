"""Preemption: on SIGTERM finish the current step, save a checkpoint, and exit 0.

Cloud TPU and most schedulers send SIGTERM some seconds before killing a preemptible VM. Instead of
dying mid-step, the loop asks `guard.should_stop(step)` after every step; once it says True the
loop saves (forced), waits for the save, prints why it stopped and returns normally. The trainer
holds the guard for the whole run, so a SIGTERM while loading, during the SFT warm-up or an
evaluation is seen too (`guard.requested()` between units of work; `phase_message`).

Multi-host: every host must stop at the same step, or the collective save would hang. When
`jax.distributed` runs with JAX's preemption service (the default), JAX itself catches SIGTERM on
any host and `multihost_utils.reached_preemption_sync_point(step)` turns True on all hosts at the
same step. Without that service, each host's local flag is combined across hosts every step.
One process: a plain Python SIGTERM handler sets the flag.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class RunStopped(Exception):
    """A stop request (SIGTERM) outside the train loop; the message says what was saved."""


def _preemption_service_running() -> bool:
    from jax._src import distributed  # no public accessor for the sync manager

    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None


class PreemptionGuard:
    """Turns SIGTERM into `should_stop(step) == True` at a step boundary that all hosts agree on.

    Use as a context manager (or call `close()`) so the previous signal handlers come back.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signal_name: str | None = None  # set once a signal arrives
        self._flag = threading.Event()
        self._previous = {}
        self._multihost = jax.process_count() > 1
        self._use_sync_point = self._multihost and _preemption_service_running()
        self._checks = 0  # sync-point ids: one per check, the same sequence on every host
        if self._use_sync_point:
            return  # JAX's own notifier owns SIGTERM; installing ours would hide it
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be created in the main thread (signals).")
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        del frame
        self.signal_name = signal.Signals(signum).name
        self._flag.set()
        # A handler must stay tiny; the loop prints the full message when it stops.
        sys.stderr.write(f"{self.signal_name} received: stopping after the current step.\n")

    def should_stop(self, step: int) -> bool:
        """True when the loop should save and exit after `step`. Call it after every step."""
        del step  # every host calls this in the same order; the check count is the sync id
        return self.requested()

    def requested(self) -> bool:
        """True once a stop was requested on any host; every host must call it at the same
        points (between steps, warm-up steps or evaluation batches)."""
        self._checks += 1
        if self._use_sync_point:
            stop = multihost_utils.reached_preemption_sync_point(self._checks)
            if stop and self.signal_name is None:
                self.signal_name = "preemption notice"
            return stop
        local = self._flag.is_set()
        if not self._multihost:
            return local
        # Any host signalled -> all hosts stop at this same step.
        flags = multihost_utils.process_allgather(np.array(local, dtype=np.bool_))
        if np.any(flags) and self.signal_name is None:
            self.signal_name = "SIGTERM on another host"
        return bool(np.any(flags))

    def stop_message(self, step: int, saved_dir: str) -> str:
        return (
            f"Stopped by {self.signal_name or 'a stop request'} after step {step}; checkpoint "
            f"saved in {saved_dir}. Run the same command again to resume."
        )

    def phase_message(self, phase: str, saved: str) -> str:
        """The message for a stop outside the train loop: `phase` (e.g. "the SFT warm-up, after
        step 3 of 8"), `saved`: what was saved and where, or why nothing was."""
        return (
            f"Stopped by {self.signal_name or 'a stop request'} during {phase}; {saved}. "
            "Run the same command again to resume."
        )

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
