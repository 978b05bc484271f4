"""A sweep shared by many workers: the trials live in an Optuna study (sweep.storage).

  python main.py --mode=sweep --config=configs/sweep.py --workdir=runs/sweep \\
    --config.sweep.storage=sqlite:///runs/study.db --config.sweep.study_name=mlp

Every worker started with the same storage and study name, on this machine or another, shares
the study. A worker asks for up to max_parallel trials, trains those that share a program
together (mlp/tools/sweep.py), reports each one's validation accuracy after every epoch, and
tells the study its final one. The pruner stops losing trials, which then leave the program.

Samplers: 'random' takes the trials the single-process sweep would train (every grid point with
each of num_random draws, the same for the same seed), put in the study's queue once by the
worker that creates it; 'tpe' lets Optuna's TPE propose num_random trials (grid fields become
choices), learning from those finished.

A worker killed mid-trial: with an RDB storage (sqlite on one machine, a database server for
many) each worker beats a heartbeat for its running trials every sweep.heartbeat_seconds; a
trial silent for 3 beats, or never claimed within SILENT_BEATS of its start, is failed by the
next worker that looks, and a copy of it is queued, so it is retried, not lost, and only the
copy counts. A journal file has no heartbeat: there a killed worker's trials stay RUNNING and
count against num_random.

Optuna is imported here only: the single-process sweep does not need it.
"""

import datetime
import json
import threading
import time

import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from input_pipeline.errors import UserError
from mlp.core import configuration
from mlp.core.fields import Role
from mlp.tools import sweep

SAMPLERS = ('random', 'tpe')
STORAGE_ATTEMPTS = 5
SQLITE_WAIT_SECONDS = 60  # How long a transaction waits for another worker's to end.
SILENT_BEATS = 10  # Intervals a trial may run unclaimed before it counts as its worker's death.
CLAIM_ATTR = 'claimed_as'  # Set, to the trial's number, once its worker has beaten for it.
PRUNERS = ('median', 'none')
BASE_ATTR = 'base_config'  # The study's user attribute that holds its base_fields.


def _optuna():
  try:
    import optuna
  except ImportError:
    raise UserError(
      'sweep.storage needs Optuna: pip install -r requirements-dev.txt (or pip install optuna).'
    ) from None
  return optuna


def distributions(search: dict) -> dict:
  """Optuna's distribution of each searched field, by dotted path, from the sweep section."""
  optuna = _optuna()
  found = {
    path: optuna.distributions.CategoricalDistribution(tuple(values))
    for path, values in search['grid'].items()
  }
  for path, (kind, *args) in search['random'].items():
    if kind == 'choice':
      found[path] = optuna.distributions.CategoricalDistribution(tuple(args))
      continue
    low, high = args
    log = kind == 'log_uniform'
    if isinstance(low, int) and isinstance(high, int):
      found[path] = optuna.distributions.IntDistribution(low, high, log=log)
    else:
      found[path] = optuna.distributions.FloatDistribution(low, high, log=log)
  return found


def _storage(search: dict):
  """The storage at search['storage']: a journal file (journal:PATH) or an RDB URL."""
  optuna = _optuna()
  url = search['storage']
  if _journal(search):
    backend = optuna.storages.journal.JournalFileBackend(url.removeprefix('journal:'))
    return optuna.storages.JournalStorage(backend)
  import sqlalchemy.exc

  sqlite = url.startswith('sqlite')
  # Autocommit at the driver: _serialize_sqlite says how each transaction begins.
  engine = {'connect_args': {'isolation_level': None, 'timeout': SQLITE_WAIT_SECONDS}}
  beat = int(search['heartbeat_seconds'])
  for attempt in range(STORAGE_ATTEMPTS):
    try:
      storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine if sqlite else None,
        heartbeat_interval=beat,
        grace_period=3 * beat,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(3),
      )
      break
    except sqlalchemy.exc.IntegrityError:  # Workers creating a new database's tables at once.
      if attempt == STORAGE_ATTEMPTS - 1:
        raise
      time.sleep(0.5 * (attempt + 1))
  if sqlite:
    _serialize_sqlite(storage.engine)
  return storage


def _serialize_sqlite(engine) -> None:
  """Makes each sqlite transaction take the database's write lock as it begins.

  Optuna claims a queued trial, and fails a stale one, by reading its state and then writing
  it under a row lock; sqlite has no row locks, so two workers could claim the same trial.
  With BEGIN IMMEDIATE the read and the write are one step.
  """
  import sqlalchemy

  sqlalchemy.event.listen(engine, 'begin', lambda conn: conn.exec_driver_sql('BEGIN IMMEDIATE'))


def base_fields(config: ml_collections.ConfigDict, search: dict) -> dict:
  """The fields every trial of a study shares: those that decide results, less the searched,
  as JSON values (a tuple is a list)."""
  searched = set(search['grid']) | set(search['random'])
  paths = configuration.with_role(config, Role.RESULT, Role.TRACED, Role.SPLIT, Role.LENGTH)
  values = {path: configuration.get(config, path) for path in paths if path not in searched}
  return json.loads(json.dumps(values))


def _check_base(study, base: dict) -> None:
  """Refuses a worker whose base config differs from the one the study was created with: its
  trials would train other models under the study's trial numbers."""
  recorded = study.user_attrs.get(BASE_ATTR)
  if recorded is None:  # A study created before its base was recorded.
    return
  differ = [
    f'{path}: {recorded.get(path)!r} there, {base.get(path)!r} here'
    for path in sorted(recorded.keys() | base.keys())
    if recorded.get(path) != base.get(path)
  ]
  if differ:
    raise UserError(
      f'Study {study.study_name} was created with another base config ({"; ".join(differ)}); '
      'start this worker with the same config file and --config flags as the first, or use '
      'another sweep.study_name.'
    )


def open_study(search: dict, listed: list[dict], storage, base: dict):
  """The shared study, created (and for 'random', its trials queued) by the first worker.

  The first worker records base (base_fields); a later one with another base is refused.
  """
  optuna = _optuna()
  sampler = (
    optuna.samplers.TPESampler(seed=search['seed'], constant_liar=True)
    if search['sampler'] == 'tpe'
    else optuna.samplers.RandomSampler(seed=search['seed'])
  )
  # Steps are epochs from 1; none is pruned on its first epoch, nor before two trials finish.
  pruner = (
    optuna.pruners.MedianPruner(n_startup_trials=max(2, search['max_parallel']), n_warmup_steps=2)
    if search['pruner'] == 'median'
    else optuna.pruners.NopPruner()
  )
  settings = dict(
    study_name=search['study_name'],
    storage=storage,
    sampler=sampler,
    pruner=pruner,
    direction='maximize',
  )
  try:
    study = optuna.create_study(**settings)
  except optuna.exceptions.DuplicatedStudyError:
    study = optuna.load_study(**{k: v for k, v in settings.items() if k != 'direction'})
    _wait_until_ready(study)
    _check_base(study, base)
    return study
  study.set_user_attr(BASE_ATTR, base)
  if search['sampler'] == 'random':
    for overrides in listed:
      study.enqueue_trial(overrides)
  budget = len(listed) if search['sampler'] == 'random' else search['num_random']
  study.set_user_attr('budget', budget)  # Last: the other workers wait for it.
  return study


def _wait_until_ready(study, seconds: float = 60) -> None:
  """Waits for the creating worker to have queued its trials (it sets 'budget' last)."""
  deadline = time.time() + seconds
  while 'budget' not in study.user_attrs:
    if time.time() > deadline:
      raise UserError(f'Study {study.study_name} has no budget; was its creator killed? Delete it.')
    time.sleep(0.2)


def _taken(study) -> list:
  """The trials a worker has taken: running or finished, not failed (a retry is a new trial)."""
  states = _optuna().trial.TrialState
  taken = (states.RUNNING, states.COMPLETE, states.PRUNED)
  return study.get_trials(deepcopy=False, states=taken)


def _surplus(study, trial, search: dict) -> bool:
  """Whether another worker took the budget's last trial while this one asked for it."""
  if search['sampler'] == 'random':  # Only queued trials are the sweep's.
    (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
    return 'fixed_params' not in frozen.system_attrs
  earlier = [t for t in _taken(study) if t.number < trial.number]
  return len(earlier) >= study.user_attrs['budget']


def _heartbeat_interval(storage) -> int | None:
  return getattr(storage, 'get_heartbeat_interval', lambda: None)()


def _claim(storage, trial) -> bool:
  """Beats for a trial just taken, then marks it claimed; False if it was failed meanwhile."""
  if _heartbeat_interval(storage):
    storage.record_heartbeat(trial._trial_id)
  try:
    trial.set_user_attr(CLAIM_ATTR, trial.number)  # A retry inherits its original's attributes.
  except _optuna().exceptions.UpdateFinishedTrialError:
    return False
  return True


def _fail_unclaimed(study, storage) -> None:
  """Fails, and queues again, running trials left unclaimed SILENT_BEATS after they started.

  Their worker died between taking one and its first heartbeat; Optuna's fail_stale_trials
  judges only trials that have beaten, so the other workers would wait for them forever.
  """
  optuna = _optuna()
  running = optuna.trial.TrialState.RUNNING
  interval = _heartbeat_interval(storage)
  cutoff = datetime.datetime.now() - datetime.timedelta(seconds=SILENT_BEATS * interval)
  for trial in study.get_trials(deepcopy=False, states=(running,)):
    if trial.user_attrs.get(CLAIM_ATTR) == trial.number or trial.datetime_start > cutoff:
      continue
    try:
      if storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial._trial_id))
    except optuna.exceptions.UpdateFinishedTrialError:  # Another worker failed it first.
      pass


def ask(study, search: dict, space: dict, storage) -> list:
  """Up to max_parallel new trials of the study; none once its budget is taken.

  Two workers may ask for the last trial at once: the one that gets a surplus trial gives it
  back as failed, untrained, and stops asking.
  """
  optuna = _optuna()
  if _heartbeat_interval(storage):  # A killed worker's trials, queued again.
    optuna.storages.fail_stale_trials(study)
    _fail_unclaimed(study, storage)
  asked = []
  while len(asked) < search['max_parallel'] and len(_taken(study)) < study.user_attrs['budget']:
    trial = study.ask(space)
    if not _claim(storage, trial):
      continue
    if _surplus(study, trial, search):
      trial.set_user_attr('surplus', True)
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      break
    asked.append(trial)
  return asked


def _others_running(study, search: dict) -> bool:
  """Whether trials of other workers still run, where a heartbeat can tell a dead one."""
  if _journal(search):
    return False  # No heartbeat: a killed worker's trial would be waited for forever.
  running = (_optuna().trial.TrialState.RUNNING,)
  return bool(study.get_trials(deepcopy=False, states=running))


def _journal(search: dict) -> bool:
  return search['storage'].startswith('journal:')


def report(trial, epoch: int, val_accuracy: float, last: bool = False) -> bool:
  """Tells the study a trial's validation accuracy after epoch; whether the trial goes on.

  After the last epoch nothing is left to save: the trial completes rather than being pruned.
  """
  if not np.isfinite(val_accuracy):
    return False
  try:
    trial.report(val_accuracy, epoch)
  except _optuna().exceptions.UpdateFinishedTrialError:  # Marked stale, queued again: let go.
    logging.warning('Trial %d was given to another worker; this one stops it.', trial.number)
    return False
  return last or not trial.should_prune()


class Heartbeat:
  """Beats for the trials of this worker while they train, where the storage has heartbeats.

  Optuna beats only inside study.optimize; a worker that asks and tells beats itself, through
  the storage's record_heartbeat.
  """

  def __init__(self, storage, trials: list):
    self._storage = storage
    self._ids = [t._trial_id for t in trials]  # Optuna's key of a trial in its storage.
    self._done = threading.Event()
    interval = _heartbeat_interval(storage)
    self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
    if interval:
      self._thread.start()

  def _beat(self, interval: int) -> None:
    while True:
      for trial_id in self._ids:
        self._storage.record_heartbeat(trial_id)
      if self._done.wait(interval):
        return

  def __enter__(self) -> 'Heartbeat':
    return self

  def __exit__(self, *exc_info) -> None:
    self._done.set()
    if self._thread.is_alive():
      self._thread.join()


def _tell(study, trial, record: dict) -> None:
  optuna = _optuna()
  try:
    trial.set_user_attr('record', json.dumps(record))
    if 'stopped_at_epoch' in record:
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
      study.tell(trial, record['val_accuracy'])
  except optuna.exceptions.UpdateFinishedTrialError:  # Its retry, elsewhere, is what counts.
    logging.warning('Trial %d was given to another worker; its result is theirs.', trial.number)


def train_asked(study, storage, trials: list, base: ml_collections.ConfigDict, splits) -> None:
  """Trains the trials, those sharing a program together, and tells the study each result."""
  configs = {t.number: sweep.make_config(base, t.params) for t in trials}
  groups = {}
  for trial in trials:
    groups.setdefault(sweep.program_key(configs[trial.number]), []).append(trial)
  with Heartbeat(storage, trials):
    for group in groups.values():

      def on_epoch(epoch: int, active: list[int], accuracies: list[float], group=group):
        last = epoch >= configs[group[0].number].optim.num_epochs
        return [report(group[i], epoch, a, last) for i, a in zip(active, accuracies, strict=True)]

      records = sweep.train_trials([configs[t.number] for t in group], splits, on_epoch)
      for trial, record in zip(group, records, strict=True):
        _tell(study, trial, record)


def write_best(study, base: ml_collections.ConfigDict, workdir) -> dict | None:
  """best_config.py from the study's best finished trial; its record, or None if none is."""
  optuna = _optuna()
  finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if not finished:
    return None
  best = max(finished, key=lambda t: (t.value, -t.number))
  config = sweep.make_config(base, best.params)
  record = {**json.loads(best.user_attrs['record']), 'id': sweep.trial_id(config)}
  sweep.write_config(config, record, workdir / sweep.BEST_CONFIG_FILE)
  return {**record, 'overrides': best.params, 'number': best.number}


def run(config: ml_collections.ConfigDict, search: dict, workdir) -> dict:
  """This worker's share of the study: asks, trains and tells until the budget is spent."""
  if search['sampler'] not in SAMPLERS or search['pruner'] not in PRUNERS:
    raise UserError(f'sweep.sampler is one of {SAMPLERS}, sweep.pruner one of {PRUNERS}.')
  listed = sweep.expand(search) if search['sampler'] == 'random' else []
  for overrides in listed:
    configuration.validate(sweep.make_config(config, overrides))
  storage = _storage(search)
  study = open_study(search, listed, storage, base_fields(config, search))
  space = distributions(search)
  splits = input_pipeline.load_splits(config)  # Before a trial is taken: its heartbeat waits.
  trained = []
  while True:
    trials = ask(study, search, space, storage)
    if not trials and not _others_running(study, search):
      break
    if not trials:  # Finished by their workers, or failed as stale and queued again.
      time.sleep(search['heartbeat_seconds'])
      continue
    logging.info('Study %s: training trials %s.', study.study_name, [t.number for t in trials])
    train_asked(study, storage, trials, config, splits)
    trained += [t.number for t in trials]
  best = write_best(study, config, workdir)
  if best is None:
    raise UserError(f'Study {study.study_name} has no finished trial yet; run more workers.')
  logging.info(
    'This worker trained trials %s. Best of study %s: trial %d, %s, val_accuracy %.4f; wrote %s.',
    trained,
    study.study_name,
    best['number'],
    best['overrides'],
    best['val_accuracy'],
    workdir / sweep.BEST_CONFIG_FILE,
  )
  return {**best, 'trained': trained}
