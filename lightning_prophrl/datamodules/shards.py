"""WebDataset shards of robot episodes: the schema, an atomic writer and a validating reader.

One WebDataset sample is one episode:

==================== ================================================================================================
key                  content
==================== ================================================================================================
``__key__``          unique episode id (``<dataset>/<index>`` style, no dots)
``frames.npy``       ``(T, H, W, 3) uint8`` (small data), or ``frames.mp4`` (H.264 via PyAV, real data)
``actions.npy``      ``(T, 14) float32`` in the unified space (``lightning_prophrl.actions``); ``actions[t]`` is taken
                     at ``frames[t]``
``action_mask.npy``  ``(14,) bool`` real dimensions
``state.npy``        optional ``(T, S) float32`` proprioception
``ee_poses.npy``     optional ``(T, n_arms, 8) float32`` end-effector xyz + quaternion wxyz + gripper opening [0, 1]
                     (world frame), the measured pose
``target_poses.npy`` optional, same layout: the commanded target pose of each frame (e.g. a mocap / servo target;
                     ``target_poses[t]`` is the target after ``actions[t - 1]``, the gripper entry the commanded
                     opening); when present it is what action frames show (see ``RobotClipDataModule``)
``meta.json``        ``dataset``, ``embodiment``, ``instruction``, ``fps``, ``success`` (required); optional
                     ``camera`` = ``{"K": 3x3, "extrinsics": 4x4 world->camera (OpenCV), "width", "height"}``,
                     ``task``, ``seed``, ``success_steps`` (per-step success flags) and anything else
==================== ================================================================================================

End-effector poses live in their own ``.npy`` rather than in ``meta.json`` because they are
per-step arrays; the camera, which is constant per episode, stays in ``meta.json``.

Beside the shards, ``stats.json`` holds the dataset's action statistics (``ActionStats``) and ``index.json`` lists
the finished shards with their sample counts, so readers never open a half-written file.

mp4 frames are written with a keyframe every ``gop`` frames (10 by default), so a reader can decode a window of an
episode from the keyframe before it (``video.Mp4Frames``, what ``iter_episodes(lazy_frames=True)`` gives); shards
written with any other keyframe interval read the same, with longer runs decoded per window.

This module is the public face of the format; the parts live in ``shard_schema`` (``Episode``, validation, the error),
``video`` (mp4 encode/decode, random access), ``shard_writer`` and ``shard_reader``, and every name is importable
from here.
"""

from __future__ import annotations

from lightning_prophrl.datamodules.lazy_frames import FrameSource, SelectedFrames
from lightning_prophrl.datamodules.shard_reader import (
    decode_episode,
    iter_episodes,
    list_shards,
    load_stats,
    read_index,
)
from lightning_prophrl.datamodules.shard_schema import (
    INDEX_FILE,
    REQUIRED_META,
    SHARD_EE_POSES,
    SHARD_TARGET_POSES,
    Episode,
    OnError,
    ShardFormatError,
    validate_arrays,
)
from lightning_prophrl.datamodules.shard_writer import ShardWriter
from lightning_prophrl.datamodules.slots import SkipCounter
from lightning_prophrl.datamodules.video import Mp4Frames, decode_mp4, encode_mp4

__all__ = [
    "INDEX_FILE",
    "REQUIRED_META",
    "SHARD_EE_POSES",
    "SHARD_TARGET_POSES",
    "Episode",
    "FrameSource",
    "Mp4Frames",
    "OnError",
    "SelectedFrames",
    "ShardFormatError",
    "ShardWriter",
    "SkipCounter",
    "decode_episode",
    "decode_mp4",
    "encode_mp4",
    "iter_episodes",
    "list_shards",
    "load_stats",
    "read_index",
    "validate_arrays",
]
