"""An image classifier in JAX, on three floors that import only downwards.

core:   what a researcher reads and changes: config schema, models, steps, trainer, checkpoints.
tools:  built on the trainer: benchmark, A/B, FLOPs, accelerator check, sweep.
reader: the product for people: reading digits in images, export, the web app.
"""
