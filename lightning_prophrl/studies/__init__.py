"""Studies: cached, seeded experiments built from the library's stages, each with a CLI and a results table.

* :mod:`lightning_prophrl.studies.prophet`: the Prophet world-model study (pretraining on other Meta-World tasks,
  few-shot adaptation to a held-out task, against training from scratch with the same budget).
  Run ``python -m lightning_prophrl.studies.prophet [--quick]``.
* :mod:`lightning_prophrl.studies.reward`: the domain-bridged reward classifier (real-only vs real + Prophet-imagined
  training, judged at the episode level on held-out real and imagined episodes against the simulator).
  Run ``python -m lightning_prophrl.studies.reward --model-dir DIR [--quick]``.
* :mod:`lightning_prophrl.studies.branches`: the within-start study (from one real state, do G branches of the policy
  have different outcomes in reality and in Prophet, and does Prophet order them the same way?), on a demo run's
  cached stages. Run ``python -m lightning_prophrl.studies.branches --out runs/window --seed 2 [--segments N]``.
* :mod:`lightning_prophrl.studies.heldout`: the shipped Prophet on tasks held out of its pretraining (few-shot
  adaptation, open loop, counterfactual actions, the arm path, closed loop).
* :mod:`lightning_prophrl.studies.adapt_mix`: adaptation with a policy's own episodes in the mix, and whether the
  adapted model then tells that policy's successes from its failures in closed loop.
  Run ``python -m lightning_prophrl.studies.adapt_mix --task TASK --policy PATH``.
"""
