"""lightning_prophrl.models."""
