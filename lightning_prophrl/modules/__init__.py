"""LightningModules: the research steps (SFT, FA-GRPO, Prophet pretraining/adaptation, reward model)."""

from lightning_prophrl.modules.fa_grpo import FAGRPOModule
from lightning_prophrl.modules.policy_sft import PolicySFTModule
from lightning_prophrl.modules.prophet_adapt import ProphetAdaptModule
from lightning_prophrl.modules.prophet_pretrain import ProphetPretrainModule
from lightning_prophrl.modules.reward_model import RewardModelModule

__all__ = ["FAGRPOModule", "PolicySFTModule", "ProphetAdaptModule", "ProphetPretrainModule", "RewardModelModule"]
