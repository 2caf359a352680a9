"""Run by test_ddp.py: a 2-process CPU DDP (gloo) Lightning fit that records which episodes each rank reads.

Usage: ``ddp_probe.py DATA_DIR OUT [NUM_WORKERS SHARD_SPLIT]``.
"""

import json
import sys

import lightning as L
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.robot import RobotClipDataModule


class RecordKeys(L.LightningModule):
    def __init__(self, out: str):
        super().__init__()
        self.layer = torch.nn.Linear(14, 1)
        self.out, self.keys, self.steps = out, [], 0

    def training_step(self, batch, batch_idx):
        self.keys += list(batch[K.EPISODE_KEY])
        self.steps += 1
        return self.layer(batch[K.ACTIONS]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self):
        with open(f"{self.out}.rank{self.global_rank}.json", "w") as f:
            json.dump({"keys": self.keys, "steps": self.steps, "world": self.trainer.world_size}, f)


if __name__ == "__main__":
    data_dir, out = sys.argv[1], sys.argv[2]
    workers, split = (int(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 3 else (1, "shards")
    dm = RobotClipDataModule([data_dir], history_len=0, chunk_len=2, image_size=16, batch_size=2,
                             samples_per_epoch=24, shuffle_buffer=2, num_workers=workers, shard_split=split)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(RecordKeys(out), datamodule=dm)
