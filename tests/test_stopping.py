"""Stop requests (signals recorded for the next step-call boundary) and the workdir lock."""

import os
import signal

import pytest

from input_pipeline.errors import UserError
from mlp.machinery import lock, stopping

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(('signum', 'status'), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_recorded_for_the_next_boundary_and_handlers_restored(signum, status, capsys):
  fresh = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
  outer = signal.signal(signum, fresh)  # As a fresh process has it, whatever ran here before.
  try:
    with stopping.StopRequests() as stop:
      assert not stop.requested(1)
      os.kill(os.getpid(), signum)
      assert stop.requested(2) and stop.name == signal.Signals(signum).name
      assert 'stopping at the next step-call boundary' in capsys.readouterr().err
      assert stopping.Stopped('stopped', stop.signum).exit_status == status
    assert signal.getsignal(signum) is fresh
  finally:
    signal.signal(signum, outer)


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / 'run').write_text('')
  with pytest.raises(UserError, match='is a file, not a directory'):
    lock.prepare(tmp_path / 'run')


def test_a_locked_workdir_refuses_a_second_holder_then_frees(tmp_path):
  lock.prepare(tmp_path / 'run')
  with lock.locked(tmp_path / 'run'):
    with pytest.raises(UserError, match='in use by a run of pid'), lock.locked(tmp_path / 'run'):
      pass
  with lock.locked(tmp_path / 'run'):
    pass
