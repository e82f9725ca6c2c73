"""Orbax checkpoints in the workdir: the latest few for resuming, and the best by eval mean Dice.

  <workdir>/checkpoints/<step>/   the last `keep_checkpoints` train states
  <workdir>/best/<step>/          the state with the highest eval mean Dice so far

Orbax writes each checkpoint into a temporary folder and renames it when complete,
so a run killed at any moment resumes from its last complete checkpoint.

The state is saved and restored as host numpy arrays: the pmapped steps keep it
replicated on the local devices, and on several hosts every process holds a full
copy, which orbax writes once.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """The two checkpoint managers of a workdir."""

    def __init__(self, workdir: str, *, keep: int, create: bool = True):
        workdir = os.path.abspath(workdir)
        if not create and not os.path.isdir(os.path.join(workdir, 'checkpoints')):
            raise FileNotFoundError(f'{workdir}: no checkpoint (train first, or check --workdir)')
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, 'checkpoints'),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, 'best'),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m['mean_dice'], best_mode='max',
                keep_checkpoints_without_metrics=False,
                # Both managers may save the same step: keep their multi-host barriers apart.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix='best')))

    def restore_latest(self, state: Any) -> Any:
        """The latest complete checkpoint restored into `state`'s structure, or `state` itself."""
        step = self.latest.latest_step()
        if step is None:
            return state
        return self.latest.restore(step, args=ocp.args.StandardRestore(jax.device_get(state)))

    def restore(self, state: Any, which: str = 'best') -> Any:
        """`which`: 'latest', 'best' or a step number (of the latest checkpoints)."""
        manager, step = self.latest, None
        if which == 'best':
            manager, step = self.best, self.best.best_step() or self.best.latest_step()
            if step is None:  # no evaluation has run yet
                manager, step = self.latest, self.latest.latest_step()
        elif which == 'latest':
            step = self.latest.latest_step()
        else:
            step = int(which)
            if step not in self.latest.all_steps():
                raise FileNotFoundError(f'no checkpoint at step {step}; have {self.latest.all_steps()}')
        if step is None:
            raise FileNotFoundError('no checkpoint in the workdir')
        return manager.restore(step, args=ocp.args.StandardRestore(jax.device_get(state)))

    def save(self, step: int, state: Any, *, force: bool = False) -> None:
        self.latest.save(step, args=ocp.args.StandardSave(jax.device_get(state)), force=force)

    def save_if_best(self, step: int, state: Any, mean_dice: float) -> None:
        """Keeps `state` in best/ when its eval mean Dice beats the best so far (NaN never does)."""
        if mean_dice == mean_dice:
            self.best.save(step, args=ocp.args.StandardSave(jax.device_get(state)),
                           metrics={'mean_dice': mean_dice})

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
