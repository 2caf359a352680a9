"""Typed, cached stage functions over the library's LightningModules and DataModules: Prophet pretraining and LoRA
adaptation, its open-loop report, the success classifier (with domain bridging on imagined twins), imagined datasets
and paired evaluation. ``prophrl demo`` and the studies call them; nothing in the library imports a study."""
