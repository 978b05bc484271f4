"""The machine facts of a benchmark record: the CPU's name, the versions, the tree, the cache."""

import platform
import subprocess
import sys
import textwrap

import pytest

from mlp.tools import provenance

CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu vme

processor\t: 1
model name\t: AMD EPYC 9B14
"""


@pytest.mark.unit
def test_cpu_model_is_the_marketing_name_not_the_architecture(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(CPUINFO)
  assert provenance.cpu_model(cpuinfo) == 'AMD EPYC 9B14'


@pytest.mark.unit
def test_cpu_model_falls_back_to_platform_without_cpuinfo(tmp_path):
  fallback = platform.processor() or platform.machine()
  assert provenance.cpu_model(tmp_path / 'missing') == fallback
  (tmp_path / 'arm').write_text('processor\t: 0\nBogoMIPS\t: 50.00\n')  # No 'model name' line.
  assert provenance.cpu_model(tmp_path / 'arm') == fallback


@pytest.mark.unit
@pytest.mark.parametrize(
  ('requests', 'hits', 'expected'),
  [(0, 0, 'off'), (3, 3, 'hit'), (3, 0, 'miss'), (3, 1, 'partial')],
)
def test_compile_cache_summary(requests, hits, expected):
  assert provenance.compile_cache(requests, hits) == expected


@pytest.mark.unit
def test_machine_facts_name_versions_and_the_tree():
  facts = provenance.machine_facts()
  assert facts['python_version'] == platform.python_version()
  assert facts['jaxlib_version'] and facts['jax_version']
  assert facts['cpu'] == provenance.cpu_model()
  assert isinstance(facts['git_dirty'], bool)  # The tests run in a git checkout.
  assert facts['compile_cache'] in {'off', 'hit', 'miss', 'partial'}


@pytest.mark.integration  # Two processes.
def test_a_second_process_reads_its_compilation_from_the_persistent_cache(tmp_path):
  """The counts come from JAX's own events: a cold process misses, a warm one hits."""
  script = textwrap.dedent(f"""
    import jax
    from mlp.tools import provenance
    jax.config.update('jax_compilation_cache_dir', {str(tmp_path)!r})
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()
    facts = provenance.machine_facts()
    print(facts['compile_cache'], facts['compile_cache_hits'])
  """)

  def run() -> list[str]:
    out = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True, check=True
    ).stdout
    return out.split()

  cold, warm = run(), run()
  assert cold[0] == 'miss' and cold[1] == '0'
  assert warm[0] == 'hit' and int(warm[1]) >= 1
