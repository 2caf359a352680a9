"""lightning_prophrl.rl."""
