"""The tools' config groups: read by the tools, checked by them, never saved with a run."""

from mlp.core.fields import Field, Role, at_least, positive

BENCHMARK = {
  'repeats': positive(5, Role.EXECUTION, 'Timed epochs after the warm-up; the median counts.'),
  'profile': Field('', Role.EXECUTION, "A directory for a jax.profiler trace; '': none."),
  'batch_sizes': Field((), Role.EXECUTION, 'Several sizes: a throughput curve in the workdir.'),
  'models': at_least(0, 0, Role.EXECUTION, 'Over 1: also that many models at once (vmap).'),
  'compare': Field(
    '',
    Role.EXECUTION,
    "A/B: 'group.field=value ...' for side B; epochs of both alternate (mlp/tools/ab.py).",
  ),
}
GROUPS = {'benchmark': BENCHMARK}


def paths(group: str) -> dict[str, Field]:
  """The fields of a tool's group by dotted path, for configuration.check."""
  return {f'{group}.{name}': field for name, field in GROUPS[group].items()}
