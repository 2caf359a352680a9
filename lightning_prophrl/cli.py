"""Command-line entry points.

* ``prophrl fit --config configs/...yaml``: LightningCLI over every LightningModule and DataModule of the library
  (``subclass_mode``: the YAML names the classes). ``srun prophrl fit ...`` runs multi-node under SLURM.
* ``prophrl demo [--quick]``: the whole pipeline on the embedded Meta-World default (``lightning_prophrl.pipeline``).

Errors a user can fix (a missing config file or data directory, a wrong config key, an unknown or abbreviated flag
such as ``--trainer.max_step`` for ``--trainer.max_steps``, a bad value) are printed as one ``error: ...`` line and
the command exits non-zero; ``--debug`` (or ``PROPHRL_DEBUG=1``) shows the full traceback
(``lightning_prophrl.cli_errors``). The data directories, ``stats_from`` directories and checkpoints a ``fit``
config names are checked before any class is built, so a missing one never leaves a half-made log directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning_prophrl.cli_errors import DEBUG_HELP, require_path, run_user_command

os.environ.setdefault("MUJOCO_GL", "egl")

# Lightning's own ``ckpt_path`` values that are not paths.
_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")
_DATA_HINT = "create it with `prophrl-data` (metaworld, corpus or convert) or fix the path in the config"


def _get(ns: Any, key: str) -> Any:
    """``ns[key]`` of a jsonargparse Namespace or dict, None when absent."""
    try:
        return ns[key] if ns is not None and key in ns else None
    except (KeyError, TypeError):
        return None


def _entry_path(entry: Any) -> str | None:
    """The directory of a dataset-mixture entry: a path, or a dict/Namespace with ``path``."""
    return entry if isinstance(entry, str) else _get(entry, "path")


def check_config_paths(cfg: Any) -> None:
    """Check the files and directories a parsed ``fit`` / ``validate`` / ... config names, before anything is built.

    * ``ckpt_path`` (unless Lightning's ``best`` / ``last`` / ``hpc`` / ``registry`` or a URL): an existing file or
      directory.
    * ``data.init_args.datasets`` / ``val_datasets`` (paths or ``{path: ...}`` entries): existing dataset directories
      holding shards, or corpus directories (``corpus.json``).
    * ``stats_from`` of ``data`` and ``model``: a directory holding ``stats.json``; ``model.init_args.sft_checkpoint``:
      an existing file.

    Raises:
        FileNotFoundError: naming the config key, the path and what to do.
    """
    from lightning_prophrl.constants import STATS_FILE
    from lightning_prophrl.datamodules.shards import list_shards

    ckpt = _get(cfg, "ckpt_path")
    keyword = str(ckpt) in _CKPT_KEYWORDS or str(ckpt).startswith("registry:") or "://" in str(ckpt)
    if isinstance(ckpt, str | Path) and not keyword:
        require_path(ckpt, "ckpt_path", hint="pass the checkpoint to resume from, `last`, or drop --ckpt_path")
    data = _get(_get(cfg, "data"), "init_args")
    for key in ("datasets", "val_datasets"):
        entries = _get(data, key) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            path = _entry_path(entry)
            if path is None:
                continue
            what = f"config key data.init_args.{key}"
            require_path(path, what, kind="dir", hint=_DATA_HINT)
            if not (Path(path) / "corpus.json").is_file():
                try:
                    list_shards(path)
                except FileNotFoundError as err:
                    raise FileNotFoundError(f"{what}: {err}; {_DATA_HINT}") from err
    model = _get(_get(cfg, "model"), "init_args")
    for group, init in (("data", data), ("model", model)):
        stats_from = _get(init, "stats_from")
        if stats_from is not None:
            require_path(Path(stats_from) / STATS_FILE, f"config key {group}.init_args.stats_from", kind="file",
                         hint=f"point it at a dataset directory (run `prophrl-data stats {stats_from}` to write it)")  # fmt: skip
    sft = _get(model, "sft_checkpoint")
    if sft is not None:
        require_path(sft, "config key model.init_args.sft_checkpoint", kind="file",
                     hint="train the SFT policy first (configs/policy) or fix the path")  # fmt: skip


def _lightning_cli(args: list[str] | None = None):
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    # Importing the subpackages registers every LightningModule / DataModule as a subclass LightningCLI can name.
    import lightning_prophrl.datamodules.prompts  # noqa: F401
    import lightning_prophrl.datamodules.robot  # noqa: F401
    import lightning_prophrl.modules  # noqa: F401

    class ProphRLCLI(LightningCLI):
        """LightningCLI that checks the paths of the config (``check_config_paths``) before building anything, and
        gives every fit a ``RequeueOnPreemption`` callback (``--preemption.requeue``; inert outside SLURM)."""

        def add_arguments_to_parser(self, parser) -> None:
            from lightning_prophrl.callbacks.preemption import RequeueOnPreemption

            parser.add_lightning_class_args(RequeueOnPreemption, "preemption")

        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)  # checked right after parsing: before seeding prints its line
            subcommand = self.config.get("subcommand")
            if subcommand is not None:
                check_config_paths(self.config[subcommand])

    return ProphRLCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        # no abbreviated options (``--trainer.max_step`` would silently set max_steps); parse errors raise and are
        # reported in one line by run_user_command instead of the whole usage
        parser_kwargs={
            "parser_mode": "omegaconf",
            "allow_abbrev": False,
            "exit_on_error": False,
            "epilog": f"--debug: {DEBUG_HELP}.",
        },
    )


def _main(args: list[str]) -> None:
    if args and args[0] == "demo":
        from lightning_prophrl.pipeline import main as demo_main

        demo_main(args[1:])
        return
    _lightning_cli(None if args == sys.argv[1:] else args)  # None: LightningCLI reads sys.argv itself


def main(argv: list[str] | None = None) -> None:
    """``prophrl``: ``demo`` runs the pipeline, anything else is LightningCLI (``fit``, ``validate``, ...)."""
    run_user_command(_main, argv, prog="prophrl")


if __name__ == "__main__":
    main()
