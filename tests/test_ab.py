"""The A/B tool: alternation order, summaries, overrides, whole-process runs, in-process epochs."""

import json
import sys

import pytest
from conftest import tiny_config

from configs import default
from input_pipeline.errors import UserError
from mlp.tools import ab, benchmark

pytestmark = pytest.mark.integration


def test_alternate_runs_abba_so_drift_hits_both_sides():
  calls = []
  a, b = ab.alternate(lambda: calls.append('a') or 1.0, lambda: calls.append('b') or 2.0, 4)
  assert ''.join(calls) == 'abbaabba'
  assert (a, b) == ([1.0] * 4, [2.0] * 4)


def test_summarize_takes_the_best_in_the_right_direction():
  rates = ab.summarize([1.0, 2.0, 4.0], [2.0, 3.0, 5.0], higher_is_better=True)
  assert (rates['a_median'], rates['a_best'], rates['b_best']) == (2.0, 4.0, 5.0)
  assert rates['ratio_median'] == 1.5 and rates['ratio_best'] == 1.25
  times = ab.summarize([1.0, 2.0, 4.0], [2.0, 3.0, 5.0], higher_is_better=False)
  assert times['a_best'] == 1.0 and times['ratio_best'] == 2.0


def test_overrides_parse_like_config_flags_and_leave_side_a_alone():
  config = default.get_config()
  overrides = 'run.steps_per_call=100 mlp.hidden_sizes=(8,8) run.placement=host'
  other = ab.apply_overrides(config, overrides)
  assert (other.run.steps_per_call, other.mlp.hidden_sizes, other.run.placement) == (
    100,
    (8, 8),
    'host',
  )
  assert (config.run.steps_per_call, config.run.placement) == (0, 'device')


@pytest.mark.parametrize(
  'overrides', ['run.no_such_field=1', 'run.steps_per_call', 'optim.batch_size=large']
)
def test_bad_overrides_are_one_line_errors(overrides):
  with pytest.raises(UserError, match='benchmark.compare'):
    ab.apply_overrides(default.get_config(), overrides)


PRINT_X = 'import json, os; print(json.dumps({"x": float(os.environ.get("X", "1"))}))'


def test_whole_process_ab_reads_the_metric_of_each_side(capsys):
  status = ab.main(['--rounds=2', '--metric=x', '--b_env=X=3', '--', sys.executable, '-c', PRINT_X])
  result = json.loads(capsys.readouterr().out)
  assert status == 0
  assert (result['a_values'], result['b_values']) == ([1.0, 1.0], [3.0, 3.0])
  assert result['ratio_median'] == 3.0


def test_whole_process_ab_reports_a_failing_command_in_one_line(capsys):
  status = ab.main(['--rounds=1', '--', sys.executable, '-c', 'raise SystemExit("broken")'])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 1 and err == [err[-1]] and 'broken' in err[-1]


def test_benchmark_compare_alternates_two_configs_in_one_process(tmp_path, mock_mnist, capsys):
  compare = 'run.steps_per_call=2'
  config = tiny_config(tmp_path, {'benchmark.repeats': 2, 'benchmark.compare': compare})
  benchmark.run(config)
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['compare'] == compare and result['rounds'] == 2
  assert len(result['a_values']) == len(result['b_values']) == 2
  assert result['ratio_median'] == pytest.approx(result['b_median'] / result['a_median'])
