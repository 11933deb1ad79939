"""Training: warm-up SFT and two-stage GRPO on TRL, evaluation, the tiny model (the `train` CLI)."""
