"""Orbax checkpoints of a ``TrainState``: params, optimizer state and step, one numbered, atomically finalized
folder per saved step."""

from __future__ import annotations

from pathlib import Path

import jax

from jaxst.training.optim import TrainState


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError("jaxst checkpoints need orbax-checkpoint: pip install 'jaxst[train]'") from None
    return ocp


def checkpoint_manager(directory: str | Path, max_to_keep: int | None = None):
    """An orbax ``CheckpointManager`` over ``directory`` (created if missing): one numbered, atomically
    finalized folder per saved step; ``max_to_keep`` keeps only the newest ones."""
    ocp = _orbax()

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(manager, state: TrainState) -> int:
    """Save params, optimizer state and step at ``state.step``; returns the step. Waits until the
    checkpoint is on disk (orbax writes to a temporary folder and renames it when complete)."""
    ocp = _orbax()

    step = int(state.step)
    manager.save(step, args=ocp.args.StandardSave(state._asdict()))
    manager.wait_until_finished()
    return step


def restore_checkpoint(manager, like: TrainState, step: int | None = None) -> TrainState:
    """The saved state at ``step`` (the latest by default), shaped and placed like ``like``: a state of
    the same model and optimizer, e.g. ``TrainState.create(model.params, optimizer)``."""
    ocp = _orbax()

    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    restored = manager.restore(step, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                                                like._asdict())))
    return TrainState(**restored)


def save_state(path: str | Path, state: TrainState) -> None:
    """Save a train state into the folder ``path`` (orbax; it must not exist yet), waiting until it is on disk."""
    ocp = _orbax()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).absolute(), state._asdict())
    checkpointer.wait_until_finished()


def restore_state(path: str | Path, like: TrainState) -> TrainState:
    """The train state saved in ``path`` by ``save_state``, shaped and placed like ``like``."""
    ocp = _orbax()
    restored = ocp.StandardCheckpointer().restore(Path(path).absolute(),
                                                  jax.tree.map(ocp.utils.to_shape_dtype_struct, like._asdict()))
    return TrainState(**restored)
