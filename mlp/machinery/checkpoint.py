"""Checkpoints of the train state in <workdir>/checkpoints, written with orbax.

Saves are asynchronous (training goes on while files are written) and atomic, so a killed run
leaves only complete checkpoints: on a disk orbax writes a temporary directory and renames it;
in a bucket, which has no rename, it writes the step's directory and a commit_success.txt last,
and counts only steps that have one. Each
checkpoint is named by its optimizer step and carries a format version and its Position: the
epochs done and, for a run stopped mid-epoch, the steps and metric sums of the next epoch.
When training resumes, a damaged latest checkpoint is set aside (process 0 moves it to
<workdir>/checkpoints-unreadable, under a name of its own, never deleting it) and the one
before it is used; read-only modes only skip it.
"""

import contextlib
import dataclasses
import json
import logging as std_logging
import shutil
import sys
import traceback
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from input_pipeline import DatasetInfo
from input_pipeline.errors import UserError
from mlp.core import build, steps
from mlp.machinery import checked, devices, files, run_config

# Bump when the train state's structure changes; older checkpoints are then refused clearly.
# 2: the Position (epoch_steps, epoch_sums) beside the epoch.
FORMAT_VERSION = 2
CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints-unreadable'


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a checkpoint stands in training: epochs done, then steps into the next one.

  sums are the metric sums of those steps (float32 values, exact in JSON), so that a run
  resumed mid-epoch reports the same epoch means as one never stopped.
  """

  epoch: int = 0
  epoch_steps: int = 0
  epoch_sums: dict[str, float] | None = None

  def sums(self) -> dict[str, np.ndarray] | None:
    if self.epoch_sums is None:
      return None
    return {name: np.float32(value) for name, value in self.epoch_sums.items()}

  def __str__(self) -> str:
    """Epochs counted from 1, as the epoch lines and the stop message count them."""
    done = f'epoch {self.epoch} done' if self.epoch else 'no epoch done'
    return done + (
      f', {self.epoch_steps} steps into epoch {self.epoch + 1}' if self.epoch_steps else ''
    )

  def past(self, num_epochs: int) -> bool:
    """Whether training from here on would go beyond num_epochs."""
    return self.epoch > num_epochs or (self.epoch == num_epochs and self.epoch_steps > 0)


# A checkpoint's meta file: its format version first (a version of other code is refused),
# then the Position. One that breaks this shape is damaged, like a checkpoint that does not read.
VERSION_SHAPE = checked.Value(dict, fields={'format_version': checked.Value(int)})
META_SHAPE = checked.Value(
  dict,
  fields={
    'format_version': checked.Value(int, low=FORMAT_VERSION, high=FORMAT_VERSION),
    'epoch': checked.Value(int, low=0),
    'epoch_steps': checked.Value(int, low=0),
    'epoch_sums': checked.Value(dict, items=checked.Value(float, finite=False), nullable=True),
  },
)


def position_of(meta: dict, where: Path) -> Position:
  """The Position a checkpoint's meta holds; a UserError for another format version, and
  checked.Mismatch for meta that is damaged (then the checkpoint is unreadable)."""
  version = checked.check(meta, VERSION_SHAPE)['format_version']
  if version != FORMAT_VERSION:
    raise UserError(
      f'Checkpoint {where} has format version {version}, this code reads version '
      f'{FORMAT_VERSION}; train into a new workdir.'
    )
  checked.check(meta, META_SHAPE)
  return Position(**{f.name: meta[f.name] for f in dataclasses.fields(Position)})


def furthest_position(workdir: Path) -> Position | None:
  """The Position of the newest checkpoint whose meta file reads and fits, without orbax.

  Cheap enough to ask before a run starts (and before it rewrites config.json).
  """
  found = (files.path(workdir) / CHECKPOINT_DIR).glob('*/meta/metadata')
  for path in sorted(
    found, key=lambda p: -int(p.parents[1].name) if p.parents[1].name.isdigit() else 0
  ):
    try:
      return position_of(checked.parse(path, checked.Value(dict)), path.parents[1])
    except (OSError, ValueError):
      continue
  return None


def finished_at(workdir: Path, num_epochs: int) -> bool:
  """Whether the newest checkpoint ends training at num_epochs and its JSON files read: a
  re-run of such a run has nothing left to train."""
  found = (files.path(workdir) / CHECKPOINT_DIR).glob('*')
  steps = [p for p in found if p.name.isdigit()]
  if not steps:
    return False
  newest = max(steps, key=lambda p: int(p.name))
  try:
    _check_metadata(newest)
    meta = checked.parse(newest / 'meta' / 'metadata', checked.Value(dict))
    return position_of(meta, newest) == Position(num_epochs)
  except (OSError, ValueError, UserError):
    return False


def check_end(workdir: Path, num_epochs: int) -> None:
  """Refuses a resume whose checkpoint is already past the requested end.

  Its test metrics would come from parameters trained longer than the config says.
  """
  position = furthest_position(workdir)
  if position is not None and position.past(num_epochs):
    needed = position.epoch + (1 if position.epoch_steps else 0)
    raise UserError(
      f'{workdir} holds a checkpoint past optim.num_epochs={num_epochs:g} ({position}); use '
      f'--config.optim.num_epochs={needed} or more to finish it, or a new --workdir.'
    )


def open_manager(workdir: Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  _drop_orbax_echoes()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else keep,
    enable_async_checkpointing=True,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
    create=not read_only,
    save_interval_steps=0 if read_only else 1,
  )
  return ocp.CheckpointManager(files.path(workdir) / CHECKPOINT_DIR, options=options)


def _failed(manager, error: Exception) -> UserError:
  """The one-line error for a failed save; the half-written checkpoint goes (process 0)."""
  if devices.is_main_process():
    for partial in Path(manager.directory).glob('*.orbax-checkpoint-tmp*'):
      shutil.rmtree(partial, ignore_errors=True)
  return UserError(
    f'Writing a checkpoint in {manager.directory} failed ({_first_line(error)}); fix the cause '
    '(disk space, permissions) and run the same command again to resume.'
  )


def save(manager: ocp.CheckpointManager, state: steps.TrainState, position: Position) -> None:
  """Starts writing; returns once the state is copied off the device (it may be donated).

  A step already on disk is kept: training is deterministic, so it holds this very state. An
  earlier background save that failed is raised here as a UserError.
  """
  step = int(state.step)
  meta = {'format_version': FORMAT_VERSION, **dataclasses.asdict(position)}
  try:
    manager.check_for_errors()
    if step in manager.all_steps():
      return
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_saved_tree(state)), meta=ocp.args.JsonSave(meta)
      ),
    )
  except Exception as error:
    raise _failed(manager, error) from None


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the background save, then closes; a failed save is a UserError."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
    manager.close()
  except Exception as error:
    with contextlib.suppress(Exception):  # close() waits again, and raises the same error.
      manager.close()
    raise _failed(manager, error) from None


def _orbax_echo(unraisable) -> bool:
  """A callback into orbax's closed event loop, or one of orbax's reader coroutines dropped
  with the error its sibling already raised."""
  code = getattr(unraisable.object, 'cr_code', None)
  if code is not None and '/orbax/' in code.co_filename:
    return True
  return isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
    unraisable.exc_value
  )


class _OrbaxTaskEcho(std_logging.Filter):
  """Drops asyncio's "exception was never retrieved" records for orbax's sibling readers."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else record.__dict__.get('exception')
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    return not any('/orbax/' in frame.filename for frame in frames)


def _drop_orbax_echoes() -> None:
  """Drops the unraisable errors orbax leaves behind when a read or write fails.

  When orbax gives up (a damaged file, a full disk), it closes its event loop while tensorstore
  still works for it, and drops the sibling coroutines of the one that failed: each callback
  into that loop, and each such coroutine (or asyncio, for a task whose error nobody read), then
  prints the same error with a traceback, up to dozens of them, after the one-line error. Every
  other unraisable error and asyncio record still prints.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_orbax_echoes', False):
    return
  std_logging.getLogger('asyncio').addFilter(_OrbaxTaskEcho())

  def hook(unraisable) -> None:
    if not _orbax_echo(unraisable):
      previous(unraisable)

  hook.drops_orbax_echoes = True
  sys.unraisablehook = hook


# The JSON files orbax parses in a checkpoint, relative to its step directory.
METADATA_FILES = ('_CHECKPOINT_METADATA', 'meta/metadata', 'state/_METADATA', 'state/_sharding')


def _check_metadata(step_dir: Path) -> None:
  """Parses a checkpoint's JSON files before orbax does; a damaged one raises ValueError here.

  Orbax reads them while its background threads already read the arrays; when one fails, those
  threads finish into a closed event loop and print a traceback each. Failing first, in this
  thread, starts none of them.
  """
  paths = [step_dir / name for name in METADATA_FILES]
  paths += sorted((step_dir / 'state' / 'array_metadatas').glob('*'))
  for file in paths:
    if file.is_file():
      json.loads(file.read_bytes())


def _restore(manager, step: int, abstract_state) -> tuple[steps.TrainState, Position]:
  _check_metadata(manager.directory / str(step))
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  position = position_of(meta, manager.directory / str(step))
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_saved_tree(abstract_state)))
  )
  return abstract_state.replace(**restored.state), position


def _saved_tree(state: steps.TrainState) -> dict:
  """The train state as saved: its fields by name, without a model state that has no arrays.

  So a stateless model's checkpoint holds what it did before the train state carried one.
  """
  tree = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
  if not jax.tree.leaves(state.model_state):
    del tree['model_state']
  return tree


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'


def _set_aside(workdir: Path, paths: list[Path]) -> Path:
  """Moves checkpoints to UNREADABLE_DIR, each under a name no earlier one has taken.

  Process 0 moves; the others wait for it, so that all then see the same checkpoints. In a
  bucket a move copies each object, then deletes it: one stopped midway leaves both copies.
  """
  aside = files.path(workdir) / UNREADABLE_DIR
  if devices.is_main_process():
    aside.mkdir(exist_ok=True)
    for path in paths:
      target = aside / path.name
      copies = 1
      while target.exists():
        target, copies = aside / f'{path.name}.{copies}', copies + 1
      if files.in_bucket(path):
        path.rename(target)
      else:
        shutil.move(path, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('checkpoints set aside')
  return aside


def restore_latest(
  workdir: Path,
  abstract_state,
  keep: int = 2,
  max_epoch: int | None = None,
  read_only: bool = False,
  attempts: int = 5,
) -> tuple[ocp.CheckpointManager | None, steps.TrainState | None, Position]:
  """The manager, the latest readable state (None if there is none) and its Position.

  A read-only reader whose checkpoint vanishes mid-read (the training run replaced it) starts
  over from the newest, up to `attempts` times.

  abstract_state (shapes, dtypes, shardings) says what the current config expects. Checkpoints
  past max_epoch are passed over (kept). Unreadable checkpoints newer than a readable one are
  set aside (so later saves cannot collide with them) unless read_only; if none is readable,
  that is an error and nothing is moved. read_only opens no manager where there are no
  checkpoints, so nothing is created (the manager is then None).
  """
  if read_only and not (files.path(workdir) / CHECKPOINT_DIR).is_dir():
    return None, None, Position()
  manager = open_manager(workdir, keep, read_only)
  unreadable = []
  for step in reversed(manager.all_steps()):
    path = manager.directory / str(step)
    try:
      state, position = _restore(manager, step, abstract_state)
    except UserError:
      manager.close()
      raise
    except Exception as error:  # Orbax raises many types for damaged or mismatched files.
      if read_only and not path.exists() and attempts > 1:
        # A run training there (keep_checkpoints=1) deleted it mid-read for a newer one.
        manager.close()
        return restore_latest(workdir, abstract_state, keep, max_epoch, read_only, attempts - 1)
      logging.warning('Checkpoint %s cannot be read: %s', path, _first_line(error))
      unreadable.append((path, error))
      continue
    if max_epoch is not None and position.epoch > max_epoch:
      logging.info('Passing over checkpoint %s: metrics.jsonl ends before it.', path)
      continue
    if unreadable and not read_only:
      manager.close()
      aside = _set_aside(workdir, [bad for bad, _ in unreadable])
      logging.warning('Set unreadable checkpoints aside in %s; resuming from %s.', aside, path)
      manager = open_manager(workdir, keep)
    logging.info('Restored checkpoint %s: %s.', path, position)
    return manager, state, position
  if unreadable:
    manager.close()
    path, error = unreadable[0]
    raise UserError(
      f'Checkpoint {path} cannot be read, nor any before it ({_first_line(error)}); '
      'it may be damaged or from a different model: use a new workdir.'
    )
  return manager, None, Position()


def abstract(tree):
  """Shapes, dtypes and shardings of a pytree, to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_for_inference(
  workdir: Path,
) -> tuple[ml_collections.ConfigDict, DatasetInfo, steps.Model, object]:
  """The saved config and dataset info, the model they describe and the latest variables.

  The variables (parameters and any model state) come back replicated on the current devices,
  whichever devices saved them.
  """
  config = run_config.load(workdir)
  info = DatasetInfo.load(workdir)
  model, variables = build.build_model(config, info)
  template = devices.replicate(build.init_state(config, model, variables), devices.make_mesh())
  manager, state, _ = restore_latest(
    workdir, abstract(template), config.run.keep_checkpoints, read_only=True
  )
  if manager is not None:
    manager.close()
  if state is None:
    raise UserError(
      f'No checkpoint in {files.path(workdir) / CHECKPOINT_DIR}; train first: '
      f'{run_config.train_command(config, files.path(workdir))}'
    )
  return config, info, model, state.variables
