"""The training core: config schema, models, pure steps, the trainer and what a run writes."""
