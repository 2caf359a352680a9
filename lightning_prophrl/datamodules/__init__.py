"""lightning_prophrl.datamodules."""
