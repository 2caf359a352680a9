"""lightning_prophrl.callbacks."""
