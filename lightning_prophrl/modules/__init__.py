"""LightningModules: the research steps (SFT, FA-GRPO, Prophet pretraining/adaptation, reward model)."""

from lightning_prophrl.modules.fa_grpo import FAGRPOModule
from lightning_prophrl.modules.policy_sft import PolicySFTModule

__all__ = ["FAGRPOModule", "PolicySFTModule"]
