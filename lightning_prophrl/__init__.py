"""lightning_prophrl: ProphRL (arXiv 2511.20633) as PyTorch Lightning components.

Subpackages: ``models`` (plain nn.Modules / diffusers models), ``rl`` (pure RL maths), ``envs`` (batched
environments), ``datamodules``, ``modules`` (LightningModules), ``callbacks``, ``metrics``.
"""

__version__ = "0.1.0"
