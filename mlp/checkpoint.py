"""Checkpoints of the train state in <workdir>/checkpoints, written with orbax.

Saves are asynchronous (training goes on while files are written) and atomic (orbax writes a
temporary directory and renames it), so a killed run leaves only complete checkpoints. Each
checkpoint is named by its optimizer step and carries the epoch and a format version.
A damaged latest checkpoint is moved to <workdir>/checkpoints-unreadable, never deleted,
and the one before it is used.
"""

import shutil
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from input_pipeline import DatasetInfo
from mlp import build, configuration, devices, steps
from mlp.errors import UserError

# Bump when the train state's structure changes; older checkpoints are then refused clearly.
FORMAT_VERSION = 1
CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints-unreadable'


def open_manager(workdir: Path, keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def save(manager: ocp.CheckpointManager, state: steps.TrainState, epoch: int) -> None:
  """Starts writing; returns once the state is copied off the device (it may be donated)."""
  manager.save(
    int(state.step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({'epoch': epoch, 'format_version': FORMAT_VERSION}),
    ),
  )


def _restore(manager, step: int, abstract_state) -> tuple[steps.TrainState, int]:
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  if meta.get('format_version') != FORMAT_VERSION:
    raise UserError(
      f'Checkpoint {manager.directory / str(step)} has format version '
      f'{meta.get("format_version")}, this code reads version {FORMAT_VERSION}; '
      'train into a new workdir.'
    )
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
  )
  return restored.state, meta['epoch']


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'


def restore_latest(
  workdir: Path, abstract_state, keep: int = 2
) -> tuple[ocp.CheckpointManager, steps.TrainState | None, int]:
  """The manager, the latest readable state (None if there is none) and its epoch.

  abstract_state (shapes, dtypes, shardings) says what the current config expects. Unreadable
  checkpoints newer than a readable one are moved aside (so later saves cannot collide with
  them); if none is readable, that is an error and nothing is moved.
  """
  manager = open_manager(workdir, keep)
  unreadable = []
  for step in reversed(manager.all_steps()):
    path = manager.directory / str(step)
    try:
      state, epoch = _restore(manager, step, abstract_state)
    except UserError:
      raise
    except Exception as error:  # Orbax raises many types for damaged or mismatched files.
      logging.warning('Checkpoint %s cannot be read: %s', path, _first_line(error))
      unreadable.append((path, error))
      continue
    if unreadable:
      manager.close()
      aside = Path(workdir) / UNREADABLE_DIR
      aside.mkdir(exist_ok=True)
      for bad_path, _ in unreadable:
        shutil.move(bad_path, aside / bad_path.name)
      logging.warning('Moved unreadable checkpoints to %s; resuming from %s.', aside, path)
      manager = open_manager(workdir, keep)
    logging.info('Restored checkpoint %s (epoch %d).', path, epoch)
    return manager, state, epoch
  if unreadable:
    manager.close()
    path, error = unreadable[0]
    raise UserError(
      f'Checkpoint {path} cannot be read, nor any before it ({_first_line(error)}); '
      'it may be damaged or from a different model: use a new workdir.'
    )
  return manager, None, 0


def abstract(tree):
  """Shapes, dtypes and shardings of a pytree, to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_for_inference(
  workdir: Path,
) -> tuple[ml_collections.ConfigDict, DatasetInfo, steps.Model, object]:
  """The saved config and dataset info, the model they describe and the latest parameters.

  The parameters come back replicated on the current devices, whichever devices saved them.
  """
  config = configuration.load(workdir)
  info = DatasetInfo.load(workdir)
  model, params = build.build_model(config, info)
  template = devices.replicate(build.init_state(config, model, params), devices.make_mesh())
  manager, state, _ = restore_latest(workdir, abstract(template), config.run.keep_checkpoints)
  manager.close()
  if state is None:
    raise UserError(
      f'No checkpoint in {Path(workdir) / CHECKPOINT_DIR}; train first: '
      f'python main.py --config=configs/default.py --workdir={workdir}'
    )
  return config, info, model, state.params
