"""Command-line entry points.

* ``prophrl fit --config configs/...yaml``: LightningCLI over every LightningModule and DataModule of the library
  (``subclass_mode``: the YAML names the classes). ``srun prophrl fit ...`` runs multi-node under SLURM.
* ``prophrl demo [--quick]``: the whole pipeline on the embedded Meta-World default (``lightning_prophrl.pipeline``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")


def _lightning_cli(args: list[str] | None = None):
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    # Importing the subpackages registers every LightningModule / DataModule as a subclass LightningCLI can name.
    import lightning_prophrl.datamodules.prompts  # noqa: F401
    import lightning_prophrl.datamodules.robot  # noqa: F401
    import lightning_prophrl.modules  # noqa: F401

    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        parser_kwargs={"parser_mode": "omegaconf"},
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "demo":
        from lightning_prophrl.pipeline import main as demo_main

        demo_main(args[1:])
        return
    _lightning_cli(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
