"""main.py as a user meets it: config overrides, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from conftest import ROOT, run_main, tiny_config
from ml_collections import config_flags

from mlp.tools import benchmark

pytestmark = pytest.mark.integration

DEFAULT = str(ROOT / 'configs' / 'default.py')


def parse(*args):
  argv = ['main.py', f'--config={DEFAULT}', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_overrides_reach_the_config():
  config = parse('--config.optim.batch_size=128', '--config.mlp.hidden_sizes=(500,500,500)')
  assert config.optim.batch_size == 128 and config.mlp.hidden_sizes == (500, 500, 500)
  assert parse().optim.batch_size == 100


@pytest.mark.parametrize('bad', ['--config.optim.batch_sise=128', '--config.optim.batch_size=x'])
def test_unknown_key_or_wrong_type_is_refused(bad):
  with pytest.raises((flags.IllegalFlagValueError, AttributeError)):
    parse(bad)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith(('E', 'FATAL'))]


@pytest.mark.parametrize(
  ('args', 'message'),
  [
    (['--config.optim.batch_sise=1'], 'batch_sise'),
    (['--config.batch_size=1'], 'now optim.batch_size'),
    (['--config.dataset=kmnist'], 'now data.name'),
    (['--config.optim.batch_size=0'], 'optim.batch_size=0'),
    (['--config.mlp.activation=nope'], 'mlp.activation'),
    (['--config.model=transformer'], 'one of mlp'),
    (['--image=x.png'], '--image is a flag of --mode=predict'),
    (['--mode=tune'], 'not a mode'),
    (['--config.data.dir=/nonexistent/tfds', '--config.run.cache_dir=/tmp/x'], '/nonexistent/tfds'),
  ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, args, message):
  result = run_main(f'--config={DEFAULT}', f'--workdir={tmp_path / "run"}', *args)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  (line,) = error_lines(result.stderr)
  assert message in line


def test_eval_without_a_run_is_one_line(tmp_path):
  result = run_main('--mode=eval', f'--workdir={tmp_path}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  (line,) = error_lines(result.stderr)
  assert 'train into this workdir first' in line


def test_benchmark_prints_one_well_formed_json_line(tmp_path, mock_mnist, capsys):
  benchmark.run(tiny_config(tmp_path, {'benchmark.repeats': 2}))
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  for key in ('examples_per_sec', 'steps_per_sec', 'ms_per_step', 'compile_seconds', 'batch_size'):
    assert isinstance(result[key], int | float) and result[key] >= 0
  assert result['examples_per_sec_min'] <= result['examples_per_sec']
  assert result['examples_per_sec'] <= result['examples_per_sec_max']
  assert result['speedup_over_baseline'] > 0
  assert result['placement'] == 'device' and result['device_count'] >= 1
  assert {'backend', 'jax_version', 'xla_flags', 'git_commit', 'device_kind'} <= set(result)
  assert {'python_version', 'jaxlib_version', 'git_dirty', 'compile_cache'} <= set(result)
  assert result['steps_per_call'] >= 1  # Pacing's choice, not the config's 0 (auto).
  assert result['flops_per_step'] > 0 and result['bytes_accessed_per_step'] > 0
  assert result['flops_per_sec'] == pytest.approx(
    result['flops_per_step'] * result['steps_per_sec']
  )
  assert 0 < result['utilization'] == result['flops_per_sec'] / result['peak_flops_per_sec']
  assert 'peak_memory_bytes' in result


def test_main_reports_a_batch_that_does_not_split_in_one_line(tmp_path):
  """On 8 simulated devices the default batch of 100 cannot split; nothing is written."""
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
  }
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'main.py'),
      f'--config={ROOT / "configs" / "default.py"}',
      f'--workdir={tmp_path / "run"}',
      '--config.run.compilation_cache=False',
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  (line,) = [line for line in result.stderr.splitlines() if line.startswith('E')]
  assert line.endswith(
    '] optim.batch_size=100 does not divide over 8 devices; use a multiple of 8, such as 96 or 104.'
  )
  assert not (tmp_path / 'run').exists()
