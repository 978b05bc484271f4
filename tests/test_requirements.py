"""docs/requirements-colab.txt, the Colab install, stays requirements.txt less two parts."""

import pytest
from conftest import ROOT

pytestmark = pytest.mark.unit


def _requirements(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.strip() and not line.startswith('#')]


def test_colab_requirements_are_requirements_txt_without_tensorflow_and_development_tools():
  runtime = (ROOT / 'requirements.txt').read_text().partition('# Development.')[0]
  expected = [line for line in _requirements(runtime) if not line.startswith('tensorflow-cpu')]
  colab = _requirements((ROOT / 'docs' / 'requirements-colab.txt').read_text())
  assert colab == expected, 'Update docs/requirements-colab.txt from requirements.txt.'
