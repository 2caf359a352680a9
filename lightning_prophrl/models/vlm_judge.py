"""The paper's reward model: a vision-language model judges each rollout video, majority vote over samples.

BRIDGE / real robot in the paper: Qwen2.5-VL-72B, zero-shot chain of thought, 5 sampled answers, majority vote. The
judge sees ``num_frames`` frames subsampled evenly over the video's real length (first and last frame included) as an
ordered image sequence, and the paper's prompt (all criteria visible, gripper contact, strict, step-by-step
reasoning, final answer ``\\box{Success}`` / ``\\box{Failure}``).

Inputs are built by the checkpoint's ``AutoProcessor`` when it loads. With transformers 5.x the Qwen2.5-VL processor
cannot be built without torchvision (its video processor needs it, even for images), which this project does not
depend on; the judge then uses the checkpoint's tokenizer and image processor directly and writes Qwen's ChatML prompt
itself, expanding each image placeholder to ``prod(image_grid_thw) / merge_size**2`` tokens as the processor would.

Transformers is imported lazily: ``pip install 'lightning_prophrl[encoders]'``.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_prophrl.models.reward import VideoRewardModel, check_videos

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "You are shown {num_frames} frames, in temporal order, from a video of a robot arm attempting the task: "
    '"{instruction}".\n'
    "Decide whether the robot succeeded at the task. Success requires ALL of the following criteria to be clearly "
    "visible in the frames (interpret them flexibly, but never assume what you cannot see):\n"
    "{criteria}\n"
    "The gripper must make contact with an object for the attempt to count. Be strict about granting success: if no "
    "object moves, it is a failure.\n"
    "First reason step by step about what happens in the frames. Then give the final answer strictly as one of: "
    "\\box{{Success}} or \\box{{Failure}}."
)
DEFAULT_CRITERIA = ("the goal stated in the task is clearly achieved by the end of the video",)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
ProcessorMode = Literal["auto", "auto_processor", "components"]

_BOX_OPEN = re.compile(r"\\*box(?:ed)?\s*\{", re.IGNORECASE)
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}", re.IGNORECASE)
_SUCCESS_WORDS = frozenset({"success", "successful", "succeeded", "succeed"})
_FAILURE_WORDS = frozenset({"failure", "failed", "fail", "unsuccessful"})


def _missing_transformers(err: ImportError) -> ImportError:
    return ImportError(
        f"the VLM judge needs transformers; install the extra: pip install 'lightning_prophrl[encoders]' ({err})"
    )


def _box_contents(text: str) -> list[str]:
    """Contents of every closed ``\\box{...}`` / ``\\boxed{...}`` in ``text`` (nested braces allowed), in order."""
    out = []
    for m in _BOX_OPEN.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def parse_verdict(text: Any) -> bool | None:
    """The verdict of one answer: its last ``\\box{...}`` or ``\\boxed{...}`` (case-insensitive, spaces, ``\\text{}``
    wrappers and punctuation tolerated) read as Success (True) or Failure (False); None when there is no box or the
    last box holds anything else."""
    if not isinstance(text, str):
        return None
    boxes = _box_contents(text)
    if not boxes:
        return None
    inner = boxes[-1]
    while _LATEX_TEXT.search(inner):
        inner = _LATEX_TEXT.sub(r"\1", inner)
    word = re.sub(r"[^a-z]", "", inner.lower())
    if word in _SUCCESS_WORDS:
        return True
    if word in _FAILURE_WORDS:
        return False
    return None


def majority_vote(verdicts: Sequence[bool | None]) -> bool:
    """Success iff strictly more than half of all votes say Success; unparseable votes (None) count as Failure, so
    ties (and an all-unparseable vote) are failures: a false success is the costlier error for the policy."""
    if len(verdicts) == 0:
        raise ValueError("majority_vote needs at least one verdict")
    return 2 * sum(v is True for v in verdicts) > len(verdicts)


def subsample_indices(length: int, num_frames: int) -> list[int]:
    """``num_frames`` evenly spaced frame indices over ``[0, length)`` including both ends (fewer when shorter)."""
    if length < 1 or num_frames < 1:
        raise ValueError(f"length and num_frames must be >= 1, got {length}, {num_frames}")
    return np.unique(np.linspace(0, length - 1, num_frames).round().astype(int)).tolist()


def to_uint8_frames(frames: Tensor, size: int | None = None) -> list[np.ndarray]:
    """``(T, 3, H, W)`` float in ``[-1, 1]`` -> ``T`` arrays ``(H, W, 3)`` uint8 (optionally resized to ``size``)."""
    x = frames.detach().float().cpu()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(x)


class VLMJudgeReward(VideoRewardModel):
    """Binary video reward from a local vision-language model with majority voting (implements ``RewardModel``).

    Args:
        model_path: local directory of the model and its processor files (no download is attempted).
        num_frames: frames shown per video (not given in the paper).
        n_votes: sampled answers per video (the paper: 5).
        temperature: sampling temperature (not given in the paper; 0 gives one greedy answer, ``n_votes`` is then
            ignored).
        top_p: nucleus sampling mass. Set explicitly because checkpoints may ship near-greedy generation defaults
            (e.g. ``top_k=1``), which would make every vote the same answer.
        top_k: top-k sampling (0 disables it).
        max_new_tokens: answer budget (the chain of thought comes before the verdict).
        prompt_template: user prompt with the fields ``{instruction}``, ``{criteria}``, ``{num_frames}``.
        criteria: task-specific success criteria keyed by instruction (the paper's PulloutTissue prompt lists
            grip-and-pull and extraction); other instructions get ``DEFAULT_CRITERIA``.
        system_prompt: system message.
        frame_size: resize frames to this square size before the processor (None: the processor's own pixel
            bounds; 64-px simulator frames give a VLM very few tokens, 224 or more is advisable).
        model_class: transformers class that loads the checkpoint.
        processor: ``auto`` (``AutoProcessor``, else tokenizer + image processor), ``auto_processor`` or
            ``components`` (force one of the two).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: where the model runs (default CUDA when available).
        seed: sampling seed; answers are reproducible for the same sequence of calls.

    Attributes:
        unparseable: answers without a readable verdict so far (each counted as a Failure vote).
        answers: answers generated so far.
        last_answers: the raw answers of the last call, per video.
    """

    def __init__(
        self,
        model_path: str,
        num_frames: int = 8,
        n_votes: int = 5,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        prompt_template: str = DEFAULT_PROMPT,
        criteria: Mapping[str, Sequence[str]] | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        frame_size: int | None = None,
        model_class: str = "Qwen2_5_VLForConditionalGeneration",
        processor: ProcessorMode = "auto",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        device: str | None = None,
        seed: int = 0,
    ):
        # 1. arguments
        if num_frames < 1 or n_votes < 1 or max_new_tokens < 1:
            raise ValueError("num_frames, n_votes and max_new_tokens must be >= 1")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0 or top_k < 0:
            raise ValueError(f"top_p must be in (0, 1] and top_k >= 0, got {top_p}, {top_k}")
        if processor not in ("auto", "auto_processor", "components"):
            raise ValueError(f"processor must be 'auto', 'auto_processor' or 'components', got {processor!r}")
        try:
            prompt_template.format(instruction="x", criteria="y", num_frames=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt_template must only use the fields {{instruction}}, {{criteria}}, {{num_frames}} (literal "
                f"braces doubled): {err!r}"
            ) from None
        self.num_frames, self.n_votes, self.temperature = num_frames, n_votes, float(temperature)
        self.top_p, self.top_k = float(top_p), int(top_k)
        self.max_new_tokens, self.prompt_template, self.system_prompt = max_new_tokens, prompt_template, system_prompt
        self.criteria = {k: list(v) for k, v in (criteria or {}).items()}
        self.frame_size, self.seed = frame_size, seed
        self.unparseable = self.answers = self._calls = 0
        self.last_answers: list[list[str]] = []
        # 2. model and processor
        try:
            import transformers
        except ImportError as err:
            raise _missing_transformers(err) from err
        if not hasattr(transformers, model_class):
            raise ValueError(f"model_class {model_class!r} is not a transformers class")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model = getattr(transformers, model_class).from_pretrained(model_path, **{dtype_key: torch_dtype})
        self.model = model.to(self.device).eval()
        self.processor_kind = self._load_processor(transformers, model_path, processor)
        self._accepts_mm_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

    def _load_processor(self, transformers: Any, path: str, mode: ProcessorMode) -> str:
        if mode in ("auto", "auto_processor"):
            try:
                self.processor = transformers.AutoProcessor.from_pretrained(path)
                self.tokenizer = self.processor.tokenizer
                return "auto_processor"
            except Exception as err:  # noqa: BLE001 - any failure falls back to the components path below
                if mode == "auto_processor":
                    raise
                log.info("AutoProcessor unavailable for %s (%s: %s); using tokenizer + image processor", path,
                         type(err).__name__, str(err).strip()[:200])  # fmt: skip
        self.processor = None
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.image_processor = transformers.AutoImageProcessor.from_pretrained(path)
        return "components"

    # 1. prompt and inputs ------------------------------------------------------------------------------------------
    def prompt(self, instruction: str, num_frames: int) -> str:
        """The user prompt for one video."""
        lines = self.criteria.get(instruction) or DEFAULT_CRITERIA
        criteria = "\n".join(f"({i + 1}) {c}" for i, c in enumerate(lines))
        return self.prompt_template.format(instruction=instruction, criteria=criteria, num_frames=num_frames)

    def build_inputs(self, frames: list[np.ndarray], instruction: str) -> dict[str, Tensor]:
        """Model inputs (token ids, pixel values, image grids) for one video given as ``(H, W, 3)`` uint8 frames."""
        text = self.prompt(instruction, len(frames))
        if self.processor is not None:
            content = [{"type": "image"} for _ in frames] + [{"type": "text", "text": text}]
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                        {"role": "user", "content": content}]  # fmt: skip
            chat = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = dict(self.processor(text=[chat], images=frames, return_tensors="pt"))
        else:
            inputs = self._components_inputs(frames, text)
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in inputs.items()}

    def _components_inputs(self, frames: list[np.ndarray], text: str) -> dict[str, Any]:
        cfg = self.model.config
        vision = dict(self.image_processor(images=frames, return_tensors="pt"))
        merge = int(getattr(self.image_processor, "merge_size", 2))
        counts = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
        start, end, pad = self.tokenizer.convert_ids_to_tokens(
            [cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id]
        )
        images = "".join(f"{start}{pad * int(c)}{end}" for c in counts)
        chat = (f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n{images}{text}<|im_end|>\n"
                "<|im_start|>assistant\n")  # fmt: skip
        tokens = dict(self.tokenizer(chat, return_tensors="pt"))
        found = int((tokens["input_ids"] == cfg.image_token_id).sum())
        if found != sum(counts):
            raise ValueError(f"tokenizer produced {found} image tokens for {sum(counts)} image patches: {pad!r} must "
                             "be a single special token of the tokenizer")  # fmt: skip
        if self._accepts_mm_types:
            tokens["mm_token_type_ids"] = (tokens["input_ids"] == cfg.image_token_id).int()
        return {**tokens, **vision}

    # 2. judging ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_answers(self, video: Tensor, instruction: str, length: int | None = None) -> list[str]:
        """Sample the answers for one ``(T, 3, H, W)`` video (``length`` real frames)."""
        length = video.shape[0] if length is None else int(length)
        frames = to_uint8_frames(video[subsample_indices(length, self.num_frames)], self.frame_size)
        inputs = self.build_inputs(frames, instruction)
        sample = self.temperature > 0
        gen = {"do_sample": sample, "max_new_tokens": self.max_new_tokens,
               "num_return_sequences": self.n_votes if sample else 1}  # fmt: skip
        if sample:
            gen.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # reproducible, without touching the caller's RNG state
            torch.manual_seed(self.seed * 1_000_003 + self._calls)
            self._calls += 1
            out = self.model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def __call__(self, videos: Tensor, instructions: list[str], lengths: Tensor | None = None) -> Tensor:
        """``(N, T, 3, H, W)`` videos -> ``(N,)`` rewards in {0, 1} by majority vote (see ``majority_vote``)."""
        lengths = check_videos(videos, instructions, lengths)
        rewards, self.last_answers = [], []
        for video, instruction, length in zip(videos, instructions, lengths.tolist()):
            answers = self.generate_answers(video, str(instruction), length)
            verdicts = [parse_verdict(a) for a in answers]
            self.answers += len(answers)
            self.unparseable += sum(v is None for v in verdicts)
            self.last_answers.append(answers)
            rewards.append(float(majority_vote(verdicts)))
        return torch.tensor(rewards, dtype=torch.float32)
