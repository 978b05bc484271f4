"""Tools built on the trainer: benchmark, A/B comparison, FLOPs, the accelerator check, sweeps."""
