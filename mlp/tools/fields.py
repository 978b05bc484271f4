"""The tools' config groups: read and checked by the tools, never saved with a run.

configs/default.py sets each of them literally, beside the training fields.
"""

from mlp.core.fields import Field, Role, at_least, choice, fraction, positive

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
  'target_accuracy': fraction(
    0.0, Role.EXECUTION, 'Time to this validation accuracy instead of throughput; 0: off.'
  ),
  'seeds': positive(1, Role.EXECUTION, 'Time to accuracy: runs with seeds seed, seed+1, ...'),
  'eval_every_steps': positive(50, Role.EXECUTION, 'Time to accuracy: validate this often.'),
}
SWEEP = {
  'grid': Field({}, Role.EXECUTION, 'Field -> values, nested as the config is: each combination.'),
  'random': Field(
    {}, Role.EXECUTION, "Field -> ('uniform' | 'log_uniform', low, high) or ('choice', ...)."
  ),
  'num_random': at_least(0, 0, Role.EXECUTION, 'Random draws from sweep.random.'),
  'seed': at_least(0, 0, Role.EXECUTION, 'Seeds the draws: the same config, the same trials.'),
  'max_parallel': positive(1, Role.EXECUTION, 'Trials trained at once in one vmapped program.'),
  'storage': Field('', Role.EXECUTION, "An Optuna storage URL shared by workers; '': alone."),
  'study_name': Field('sweep', Role.EXECUTION, 'Workers with one storage and name share a study.'),
  'sampler': choice('random', ('random', 'tpe'), Role.EXECUTION, "'tpe': Optuna's TPE."),
  'pruner': choice('median', ('median', 'none'), Role.EXECUTION, 'Stops trials below the median.'),
  'heartbeat_seconds': positive(10, Role.EXECUTION, 'A trial silent for 3 beats is retried.'),
}
GROUPS = {'benchmark': BENCHMARK, 'sweep': SWEEP}


def paths(group: str) -> dict[str, Field]:
  """The fields of a tool's group by dotted path, for configuration.check."""
  return {f'{group}.{name}': field for name, field in GROUPS[group].items()}
