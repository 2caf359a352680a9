"""Studies: cached, seeded experiments built from the library's stages, each with a CLI and a results table.

* :mod:`lightning_prophrl.studies.prophet`: the Prophet world-model study (pretraining on other Meta-World tasks,
  few-shot adaptation to a held-out task, against training from scratch with the same budget).
  Run ``python -m lightning_prophrl.studies.prophet [--quick]``.
"""
