"""The installs stay in step: running needs requirements.txt, development adds its own file."""

import pytest
from conftest import ROOT

pytestmark = pytest.mark.unit


def _requirements(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.strip() and not line.startswith('#')]


def test_colab_requirements_are_requirements_txt():
  runtime = _requirements((ROOT / 'requirements.txt').read_text())
  colab = _requirements((ROOT / 'docs' / 'requirements-colab.txt').read_text())
  assert colab == runtime, 'Update docs/requirements-colab.txt from requirements.txt.'


def test_running_needs_no_tensorflow_nor_development_tools():
  runtime = {
    line.partition('==')[0] for line in _requirements((ROOT / 'requirements.txt').read_text())
  }
  development = _requirements((ROOT / 'requirements-dev.txt').read_text())
  assert development[0] == '-r requirements.txt'
  tools = {line.partition('==')[0] for line in development[1:]}
  assert {'tensorflow-cpu', 'pytest', 'ruff', 'playwright', 'papermill'} <= tools
  assert not runtime & tools
