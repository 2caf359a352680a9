"""Run by test_fa_grpo_resume.py in a process of its own: the FA-GRPO run of that test in the real simulator, with a
checkpoint after every update (``last.ckpt``), each update's prompts and logged metrics appended to a JSON-lines file,
and a marker file written when update ``--mark`` starts (the test SIGKILLs the process there, mid-update)."""

import argparse
import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_prophrl import constants as K  # noqa: E402
from lightning_prophrl.datamodules.prompts import PromptDataModule  # noqa: E402
from lightning_prophrl.envs.metaworld import MetaWorldEnv  # noqa: E402
from tests.modules.test_policy_rl_modules import TASK, rl_module, varied_reward  # noqa: E402


class Log(L.Callback):
    def __init__(self, out: Path, mark: int | None, marker: Path):
        self.out, self.mark, self.marker = out, mark, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.mark is not None and pl_module.updates + 1 == self.mark:
            self.marker.write_text(str(pl_module.updates))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = {"prompts": batch[K.SEED].tolist(),
               "metrics": {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}}  # fmt: skip
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--mark", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir)
    env = MetaWorldEnv(TASK, num_prompts=2, group_size=2, image_size=32, max_steps=12, exec_horizon=2)
    module = rl_module(env, reward_model=varied_reward, seed=3)
    dm = PromptDataModule(tasks=[TASK], train_seeds=(2000, 2010), eval_seeds=(1000, 1004), num_prompts=2,
                          updates_per_epoch=2, seed=1)  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt, Log(root / "log.jsonl", args.mark, root / "mark")])  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=str(root / "last.ckpt") if args.resume else None)
    env.close()


if __name__ == "__main__":
    main()
