"""Batch, shard and rollout-info keys and shared sizes used by every datamodule, environment, model and module.

Never write these strings by hand elsewhere: import them from here.
"""

from pathlib import Path

# ---- The YAML configs that ship inside the package (``configs/`` at the repository root links here) ----
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# ---- Unified action space (paper: unified action representation): 2 arms x [dpos(3), deuler(3), gripper(1)] ----
NUM_ARMS = 2
ARM_DIM = 7
ACTION_DIM = NUM_ARMS * ARM_DIM  # 14

# ---- Keys of one episode sample inside a WebDataset shard ----
SHARD_FRAMES_NPY = "frames.npy"
SHARD_FRAMES_MP4 = "frames.mp4"
SHARD_ACTIONS = "actions.npy"
SHARD_ACTION_MASK = "action_mask.npy"
SHARD_STATE = "state.npy"  # optional proprioception (T, S)
SHARD_META = "meta.json"
STATS_FILE = "stats.json"
SHARD_LATENTS = "latents.npz"  # per episode: per-frame latents, window starts, window latents, meta (see latent_shards)
LATENTS_FILE = "latents.json"  # per dataset directory, beside index.json: how the latents were made (the encode run)

# ---- Batch keys produced by the datamodules ----
HISTORY = "history"  # (B, Th, 3, H, W) float in [-1, 1], past frames before the conditioning frame
HISTORY_MASK = "history_mask"  # (B, Th) bool, False where the episode had no such past frame
COND_FRAME = "cond_frame"  # (B, 3, H, W) float in [-1, 1]
FUTURE = "future"  # (B, L, 3, H, W) float in [-1, 1], the L frames after the conditioning frame
ACTIONS = "actions"  # (B, L, 14) normalized action chunk in the unified space
ACTION_MASK = "action_mask"  # (B, 14) bool, which dimensions are real
EE_POSES = "ee_poses"  # (B, L, NUM_ARMS, 7) end-effector xyz + quaternion wxyz in the world frame, optional
GRIPPER = "gripper"  # (B, L, NUM_ARMS) gripper opening in [0, 1], optional
CAMERA_K = "camera_k"  # (B, 3, 3) intrinsics in pixels of the output frame size
CAMERA_EXTR = "camera_extr"  # (B, 4, 4) world -> camera transform (OpenCV convention)
HAS_CAMERA = "has_camera"  # (B,) bool
OBS_IMAGE = "obs_image"  # (B, 3, H, W) float in [-1, 1]
OBS_STATE = "obs_state"  # (B, S) float, optional proprioception
INSTRUCTION = "instruction"  # list[str] of length B
TASK = "task"  # list[str] task names (e.g. Meta-World environment names)
TASK_ID = "task_id"  # (B,) long
DATASET_ID = "dataset_id"  # (B,) long, index into the mixture
SUCCESS = "success"  # (B,) float in {0, 1}, episode outcome
CLIP_SUCCESS = "clip_success"  # (B,) float in {0, 1}, success reached by the end of the clip
EPISODE_KEY = "episode_key"  # list[str]
FRAME_INDEX = "frame_index"  # (B,) long, index of the conditioning frame in its episode
SEED = "seed"  # (B,) long, simulator seed of the initial state (prompts)
PREFIX_ACTIONS = "prefix_actions"  # (T, 14) float, unified actions before a branch start (simulators replay them)
COND_TARGET = "cond_target"  # (B, 3) float, commanded end-effector target xyz at the conditioning frame (prompts)
VIDEO = "video"  # (B, T, 3, H, W) float in [-1, 1]
# pre-encoded latent batches (``RobotClipDataModule(latents=True)``, ``prophrl-data encode``) carry these in place of
# COND_FRAME / FUTURE / HISTORY; every other key is as in a pixel batch
LATENT_COND = "latent_cond"  # (B, C, h, w) float32, latent of the conditioning frame encoded as a one-frame clip
LATENT_FUTURE = "latent_future"  # (B, C, T_f, h, w) float32, the future latents of the [cond, future] clip
LATENT_HISTORY = "latent_history"  # (B, C, T_h, h, w) float32, per-frame latents of the history (HISTORY_MASK holds)
LATENT_ACTION_FRAMES = "latent_action_frames"  # (B, C, T_f, h, w) float32, encoded action frames (zeros: no camera)
LATENT_FINGERPRINT = "latent_fingerprint"  # list[str], the codec fingerprint each sample's latents were made with
LATENT_AF_FINGERPRINT = "latent_action_frame_fingerprint"  # list[str], codec + action-frame style fingerprint
LATENT_SOURCE = "latent_source"  # list[str], the dataset directory each sample was read from (for error messages)

# ---- Keys of a rollout's info dict (BatchedEnv.step / RolloutBatch.info) ----
# ``collect_rollouts`` moves INFO_SUCCESS and INFO_STEPS out of the last step's info into ``RolloutBatch.success`` and
# ``.steps`` and adds INFO_VIDEO_LENGTHS (environments with ``video_lengths()``); the other keys stay in ``.info``.
INFO_SUCCESS = SUCCESS  # (N,) bool, success reached at some step of the episode so far (what a reward oracle reads)
INFO_STEPS = "steps"  # (N,) long, environment steps executed since reset
INFO_SUCCESS_NOW = "success_now"  # (N,) bool, success flag of the latest state (simulators only)
INFO_EXECUTED = "executed"  # (N,) long, actions of the last chunk that were executed (0 for done envs)
INFO_EE_POSE = "ee_pose"  # (N, 7) float, end-effector xyz + quaternion wxyz in the world frame (simulators only)
INFO_SUCCESS_PROB = "success_prob"  # (N,) float, world model: success probability of the newest imagined frame
INFO_VALUE = "end_value"  # (N,) float, world model with a value scorer: value of the last frame of cut episodes, or NaN
INFO_SCORE = "success_score"  # (N,) float, world model: best success probability held for success_k segments in a row
INFO_DRAW_SUCCESS = "draw_success"  # (D, N) bool, world model with draws=D: INFO_SUCCESS of every noise draw
INFO_DRAW_SCORE = "draw_score"  # (D, N) float, world model with draws=D: INFO_SCORE of every noise draw
INFO_DRAWS_AGREE = "draws_agree"  # (N,) bool, world model with draws=D: whether every draw agrees on success
INFO_VIDEO_LENGTHS = "video_lengths"  # (N,) long, RolloutBatch.info only: real frames per rollout video
