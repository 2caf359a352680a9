"""lightning_prophrl.metrics."""
