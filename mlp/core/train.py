"""The training loop: step calls, then what is due after them (records, checkpoints, stops).

`train_and_evaluate` is what `python main.py` runs, or a notebook; mlp/machinery/run.py keeps
the workdir safe (lock, signals, config.json, resuming, the metrics sink)."""

import os

import ml_collections
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import metrics, outliers
from mlp.core.steps import TrainState
from mlp.core.trainer import (
  Trainer,
  compile_programs,
  last_batch_metrics,
  last_step,
  measure_statistics,
  place_eval_data,
  setup,
  train_steps,
  validate,
)
from mlp.machinery import checkpoint, devices, reporting
from mlp.machinery.run import Run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes in workdir), validating and checkpointing as config.run says, and tests
  the last state. Returns the records and the test metrics, as written to metrics.jsonl.

  On SIGTERM or SIGINT it checkpoints at the next step-call boundary and raises
  stopping.Stopped.
  """
  with Run(config, workdir) as run:
    if finished := run.results():
      return finished
    splits = input_pipeline.load_splits(config)
    logging.info('Data: %s.', splits)
    trainer, state = setup(config, splits.info, splits.train, splits.validation)
    state = train_loop(config, trainer, run, *run.start(splits, state, trainer.steps_per_epoch))
    test_batches = place_eval_data(config, splits.test, trainer.mesh)
    programs = trainer.programs
    test = metrics.summarize(programs.evaluate(state.variables, *test_batches), 'test_')
    if config.outliers.weight:  # The refusal threshold predict and serve use.
      validation = place_eval_data(config, splits.validation, trainer.mesh)[0]
      probabilities = programs.probabilities(state.variables, validation)
      keep, count = config.outliers.keep, len(splits.validation)
      run.save_json(outliers.REFUSAL_FILE, outliers.refusal(probabilities, count, keep))
    run.finish(test, programs.probabilities(state.variables, test_batches[0]))
    return {'records': run.sink.records[:-1], **test}


def train_loop(
  config: ml_collections.ConfigDict,
  trainer: Trainer,
  run: Run,
  state: TrainState,
  step: int,
  sums: metrics.Sums,
) -> TrainState:
  """Trains from `step` (with the metric sums since the last record) to the last step.

  A record holds the train means since the previous one, every run.log_every_steps, and the
  validation metrics, every run.eval_every_steps (0: at each epoch's end); both come at the
  last step too. A call never crosses an epoch's end or a step where something is due, so
  how the steps are split into calls never changes a number.
  """
  per_epoch, every = trainer.steps_per_epoch, config.run
  last = last_step(config, per_epoch)
  log_every, eval_every = every.log_every_steps or per_epoch, every.eval_every_steps or per_epoch
  checkpoint_every = [
    n for n in (every.checkpoint_every_steps, every.checkpoint_every_epochs * per_epoch) if n
  ]
  while step < last:
    run.clock.start()
    periods = (per_epoch, log_every, eval_every, *checkpoint_every)
    count = min(trainer.steps_per_call, last - step, *(n - step % n for n in periods))
    state, call_sums = train_steps(trainer, state, step, count)
    step, sums = step + count, metrics.add(sums, call_sums)

    log_due = step % log_every == 0 or step == last
    eval_due = step % eval_every == 0 or step == last
    if log_due or eval_due:
      run.clock.stop(state)
      record = {}
      if log_due:
        record |= metrics.summarize(sums, 'train_', last_batch_metrics(trainer, state, step))
        sums = metrics.zero_sums()
      if eval_due:
        state = measure_statistics(trainer, state)
        record |= validate(trainer, state.variables)
      run.write(step, record)
    stop = run.stop_requested(step)
    checkpoint_due = step == last or any(step % n == 0 for n in checkpoint_every)
    if stop or (checkpoint_every and checkpoint_due):
      run.save(state, step, sums)
    if stop and step < last:
      raise run.stopped(step)
  return state


def evaluate_checkpoint(workdir: str | os.PathLike) -> dict[str, float]:
  """Validation and test metrics of the latest checkpoint in workdir (--mode=eval)."""
  config, info, model, variables = checkpoint.restore_for_inference(workdir)
  splits = input_pipeline.load_splits(config)
  if splits.info != info:
    raise UserError(f'The data of {config.data.name} changed since {workdir} was trained.')
  mesh = devices.make_mesh()
  evaluate = compile_programs(model, mesh).evaluate
  result = {}
  for prefix, split in (('val_', splits.validation), ('test_', splits.test)):
    batches = place_eval_data(config, split, mesh)
    result |= metrics.summarize(evaluate(variables, *batches), prefix)
  logging.info('%s', reporting.format_line('Checkpoint', result))
  return result
