"""lightning_prophrl.modules."""
