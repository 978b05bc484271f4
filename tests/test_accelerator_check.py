"""The accelerator check runs end to end (here on a CPU); it fails when training does not learn."""

import pytest
from conftest import tiny_config

from mlp.tools import accelerator_check

pytestmark = pytest.mark.integration


@pytest.mark.slow  # A training run and four benchmarks: ~30 s quiet, ~60 s loaded.
def test_check_prints_its_table_and_fails_below_the_accuracy(
  tmp_path, mock_mnist, monkeypatch, capsys
):
  monkeypatch.setattr(accelerator_check, 'MIN_ACCURACY', 1.01)  # Unreachable: must fail.
  config = tiny_config(tmp_path, {'benchmark.batch_sizes': (10,), 'benchmark.repeats': 1})

  status = accelerator_check.run(config)

  out = capsys.readouterr().out
  assert status == 1
  assert 'FAILED' in out
  for dtype in accelerator_check.DTYPES:
    assert f'{dtype}, batch 10 ' in out
  assert '% of peak' in out and 'devices ' in out
