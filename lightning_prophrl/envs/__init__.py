"""lightning_prophrl.envs."""
