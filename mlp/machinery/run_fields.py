"""The config's `run` group: how a run executes (placement, pacing, caches, checkpoints, records).

None of these fields but compute_dtype changes a number; the loop reads the cadences, the
machinery the rest. mlp/core/configuration.py puts the group in the schema.
"""

from mlp.core.fields import Field, Role, at_least, choice, positive

FIELDS = {
  'placement': choice(
    'device', ('device', 'host'), Role.EXECUTION, "'device': train split on the accelerator."
  ),
  'steps_per_call': at_least(0, 0, Role.EXECUTION, 'Training steps per jitted call; 0: an epoch.'),
  'eval_batch_size': positive(1000, Role.EXECUTION, 'The last batch is padded and masked.'),
  'compute_dtype': choice(
    'float32', ('float32', 'bfloat16'), Role.RESULT, 'bfloat16: layers in bf16, float32 params.'
  ),
  'matmul_precision': choice(
    'default', ('default', 'high', 'highest'), Role.EXECUTION, 'jax_default_matmul_precision.'
  ),
  'cache_dir': Field(None, Role.EXECUTION, 'None: $XDG_CACHE_HOME/mnist-jax.', kind=str),
  'compilation_cache': Field(True, Role.EXECUTION, "JAX's persistent compilation cache."),
  'eval_every_steps': at_least(0, 0, Role.EXECUTION, 'Validate every this many steps; 0: epochs.'),
  'log_every_steps': at_least(0, 0, Role.EXECUTION, 'Record train means this often; 0: epochs.'),
  'checkpoint_every_steps': at_least(0, 0, Role.EXECUTION, 'Also checkpoint this often; 0: off.'),
  'checkpoint_every_epochs': at_least(0, 1, Role.EXECUTION, '0 turns epoch checkpoints off.'),
  'keep_checkpoints': positive(2, Role.EXECUTION, 'How many of the latest stay on disk.'),
  'pictures': Field(True, Role.EXECUTION, 'Draw the curves and test pictures after training.'),
}
