"""Converters from public robot-dataset layouts to the project's WebDataset episode shards.

* ``convert_lerobot`` reads LeRobotDataset v2.0/v2.1 (one parquet + one mp4 per episode) and v3.0 (several episodes
  per parquet/mp4, located by per-episode rows in ``meta/episodes``) directly with pyarrow and PyAV.
* ``convert_hdf5`` reads robomimic / LIBERO hdf5 files (``data/demo_N/...``).

Both map actions through ``lightning_prophrl.actions.to_unified`` with a convention the caller names explicitly
(nothing is guessed), write with the atomic ``ShardWriter`` (``stats.json`` and ``index.json`` come with it) and return
a summary ``{"episodes", "frames", "skipped", "skipped_episodes", ...}``.

``common`` holds the plumbing both converters share: the missing-key error, action mapping with the episode
named in errors, frame post-processing (flip / resize), the conversion loop (progress bar, ``on_error``) and the
checks of every array written.

Validation: every source array is checked where it is read (``check_source_array``, ``check_frames``: numbers,
one row per step, the declared width, finite values) and every assembled episode again with the shard reader's rules
(``validate_episode``: ``shards.validate_arrays`` plus finite state and poses), so a converted dataset always reads
back. Every error names the episode and the source file and key. A column wider than the dataset declares is an
error naming both widths, never read as a second arm.

Output: a conversion either completes or leaves its output directory as it found it (``guarded_output``): a
directory the conversion created is removed on failure, and in an existing directory (``append=True``) the shards it
added are deleted and ``index.json`` / ``stats.json`` restored.
"""

from lightning_prophrl.datamodules.converters.common import (
    CONVENTIONS,
    JOINT_MAPPING_HELP,
    JointMapping,
    MissingKeyError,
    check_arm_count,
    check_convention,
    check_frames,
    check_source_array,
    guarded_output,
    key_part,
    load_joint_mapping,
    map_actions,
    postprocess_frames,
    run_conversion,
    validate_episode,
)
from lightning_prophrl.datamodules.converters.hdf5 import convert_hdf5
from lightning_prophrl.datamodules.converters.lerobot import convert_lerobot

__all__ = [
    "CONVENTIONS",
    "JOINT_MAPPING_HELP",
    "JointMapping",
    "MissingKeyError",
    "check_arm_count",
    "check_convention",
    "check_frames",
    "check_source_array",
    "load_joint_mapping",
    "convert_hdf5",
    "convert_lerobot",
    "guarded_output",
    "key_part",
    "map_actions",
    "postprocess_frames",
    "run_conversion",
    "validate_episode",
]
