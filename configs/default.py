"""The original Keras notebook, field by field.

Command:
  python main.py --config=configs/default.py

Expected: about 97% test accuracy after 10 epochs (the notebook reached 96.92%).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Returns the notebook's hyperparameters."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'mnist'  # tfds name, optionally with a version ('mnist:3.0.1').
  config.data_dir = config_dict.placeholder(str)  # None: TFDS_DATA_DIR or tfds's default.
  config.validation_fraction = 0.1  # Share of the train split held out, fixed by data_seed.
  # The notebook's tf.data shuffle buffer. Our in-memory and on-device shuffles are full
  # permutations (an unbounded buffer), so it only documents the original.
  config.shuffle_buffer_size = 10000
  config.data_seed = 0  # Picks the validation split and every epoch's training order.

  # Model.
  config.hidden_sizes = (50, 50)  # Widths of the hidden Dense layers.
  config.activation = 'relu'  # Any jax.nn activation: relu, gelu, silu, tanh, ...
  config.dropout_rate = 0.0  # Dropout after each hidden layer (the notebook had none).

  # Optimisation.
  config.batch_size = 100  # Global batch; must be divisible by the device count.
  config.learning_rate = 1e-3  # Adam's step size (the peak of a schedule).
  config.weight_decay = 0.0  # AdamW's decoupled decay of the weight matrices; 0: plain Adam.
  config.schedule = 'constant'  # Learning-rate shape: 'constant', or 'cosine' decay to 0.
  config.warmup_epochs = 0.0  # Linear warm-up from 0 to learning_rate over these epochs.
  config.label_smoothing = 0.0  # Share of each training target spread over all classes.
  config.num_epochs = 10
  config.seed = 0  # Parameter initialisation and dropout.

  # Random distortions of the training images on the device (mlp/augment.py), each drawn in
  # [-x, x] per image; all 0: none, as in the notebook.
  config.augment_rotation = 0.0  # Degrees.
  config.augment_scale = 0.0  # Relative change of each axis' size.
  config.augment_shear = 0.0  # Degrees.
  config.augment_translation = 0.0  # Pixels along each axis.
  config.augment_elastic_alpha = 0.0  # Elastic displacement scale in pixels (Simard et al.: 34).
  config.augment_elastic_sigma = 4.0  # Smoothness of the elastic field in pixels.

  # Execution.
  config.placement = 'device'  # 'device': train split on the accelerator; 'host': streamed.
  config.steps_per_call = 0  # Training steps per jitted call; 0 = a whole epoch.
  config.eval_batch_size = 1000  # Evaluation batch; the last one is padded and masked.
  config.compute_dtype = 'float32'  # 'bfloat16' computes in bf16 with float32 parameters.
  config.matmul_precision = 'default'  # jax_default_matmul_precision: default, high, highest.
  config.cache_dir = config_dict.placeholder(str)  # None: $XDG_CACHE_HOME/mnist-jax.
  config.compilation_cache = True  # JAX's persistent compilation cache under cache_dir.

  # Benchmark (--mode=benchmark).
  config.benchmark_repeats = 5  # Timed epochs after the warm-up; the median is reported.
  config.profile = ''  # A directory for a jax.profiler trace of the benchmark; '' = none.
  config.benchmark_batch_sizes = ()  # Several sizes: a throughput curve in the workdir.
  config.benchmark_models = 0  # Over 1: also time that many models trained at once (vmap).
  # A/B instead: 'field=value ...' overrides for side B; epochs of A and B are alternated
  # benchmark_repeats times and each side's median and best compared (mlp/ab.py).
  config.benchmark_compare = ''

  # Checkpoints in <workdir>/checkpoints; re-running with the workdir resumes.
  config.checkpoint_every_epochs = 1  # 0 turns checkpoints off.
  config.keep_checkpoints = 2  # How many of the latest checkpoints stay on disk.
  return config
