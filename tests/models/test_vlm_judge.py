"""The VLM judge: verdict parsing, voting, prompt, and the whole pipeline on a tiny random-weight Qwen2.5-VL."""

from __future__ import annotations

import sys

import pytest
import torch

from lightning_prophrl.models.reward import RewardModel
from lightning_prophrl.models.vlm_judge import (
    DEFAULT_PROMPT,
    VLMJudgeReward,
    majority_vote,
    parse_verdict,
    subsample_indices,
    to_uint8_frames,
)

SUCCESS_TOKEN, FAILURE_TOKEN = "\\box{Success}", "\\box{Failure}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run fastest on one thread when other jobs share the 2 cores (oversubscription costs ~10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- parsing and voting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("The cube is lifted. \\box{Success}", True),
        ("Nothing moved.\n\\box{Failure}", False),
        ("\\boxed{Success}", True),
        ("\\boxed{ failure }", False),
        ("\\box { SUCCESS }", True),
        ("\\box{success.}", True),
        ("final: \\boxed{\\text{Failure}}", False),
        ("\\boxed{\\textbf{ Success }}", True),
        ("I first thought \\box{Success} but the drawer is still closed: \\box{Failure}", False),
        ("\\box{Failure} ... on reflection the object is at the goal \\boxed{Success}", True),
        ("\\\\box{Success}", True),  # a doubly escaped backslash
        ("**Answer:** \\box{Successful}", True),
        ("\\box{Failed}", False),
        ("Success", None),  # no box
        ("The answer is Failure.", None),
        ("\\box{Maybe}", None),
        ("\\box{Success or Failure}", None),
        ("\\box{}", None),
        ("\\box{Success", None),  # never closed
        ("\\box{Success} then \\box{unclear}", None),  # the last box decides
        ("", None),
        ("robot arm gripper the the", None),
        (None, None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


@pytest.mark.parametrize(
    ("votes", "success"),
    [
        ([True, True, False], True),
        ([True, False], False),  # tie -> failure
        ([True, True, False, False], False),
        ([True, True, True, None, None], True),
        ([True, True, None, None, False], False),  # unparseable votes count as failure
        ([None, None, None], False),
        ([True], True),
        ([False, False, False, False, True], False),
    ],
)
def test_majority_vote(votes, success):
    assert majority_vote(votes) is success


def test_majority_vote_needs_votes_and_helpers():
    with pytest.raises(ValueError, match="at least one"):
        majority_vote([])
    assert subsample_indices(10, 4) == [0, 3, 6, 9]
    assert subsample_indices(3, 8) == [0, 1, 2]
    assert subsample_indices(1, 5) == [0]
    frames = to_uint8_frames(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4))
    assert len(frames) == 2 and frames[0].shape == (4, 4, 3) and frames[0][0, 0].tolist() == [0, 128, 255]
    assert to_uint8_frames(torch.zeros(1, 3, 8, 8), size=16)[0].shape == (16, 16, 3)


def test_missing_transformers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"lightning_prophrl\[encoders\]"):
        VLMJudgeReward(str(tmp_path))


def test_bad_prompt_template_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="prompt_template"):
        VLMJudgeReward(str(tmp_path), prompt_template="Did it work for {task}?")


# ---- tiny random Qwen2.5-VL end to end ------------------------------------------------------------------------------
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
          "<|video_pad|>"]  # fmt: skip
WORDS = ["[UNK]", "robot", "arm", "gripper", "cube", "moves", "the", "not", "is", "at", "goal", "Success",
         "Failure", "box", "{", "}", SUCCESS_TOKEN, FAILURE_TOKEN]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A 2-layer, 64-wide random Qwen2.5-VL with a word-level tokenizer and the Qwen2-VL image processor, saved with
    ``save_pretrained`` (no download)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as qwen_image

    path = tmp_path_factory.mktemp("tiny_qwen")
    vocab = {tok: i for i, tok in enumerate(CHATML + WORDS)}
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    word_level.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=CHATML,
    )  # fmt: skip
    tokenizer.save_pretrained(path)
    qwen_image.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(path)
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=56),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    return str(path), vocab


def only_tokens(judge: VLMJudgeReward, vocab: dict[str, int], allowed: list[str]) -> None:
    """Restrict what the model may generate through its generation config (transformers' ``suppress_tokens``)."""
    keep = {vocab[t] for t in allowed}
    judge.model.generation_config.suppress_tokens = [i for i in vocab.values() if i not in keep]


def videos(n: int = 3, t: int = 6) -> torch.Tensor:
    return torch.rand(n, t, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_tiny_judge_inputs_follow_the_frames_and_the_prompt(tiny_qwen):
    path, vocab = tiny_qwen
    judge = VLMJudgeReward(path, num_frames=4, n_votes=3, max_new_tokens=8, device="cpu",
                           criteria={"open the drawer": ["the drawer is open"]})  # fmt: skip
    assert isinstance(judge, RewardModel)
    try:
        import torchvision  # noqa: F401
    except ImportError:  # transformers' Qwen2.5-VL processor needs torchvision: the judge falls back
        assert judge.processor_kind == "components"
    frames = to_uint8_frames(videos(1)[0, :4])
    inputs = judge.build_inputs(frames, "open the drawer")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 4  # 64 px -> 56 px -> 4 x 4 patches per frame
    ids = inputs["input_ids"][0]
    assert int((ids == vocab["<|image_pad|>"]).sum()) == 4 * 4  # 2 x 2 merge: 4 tokens per frame
    assert int((ids == vocab["<|vision_start|>"]).sum()) == 4
    prompt = judge.prompt("open the drawer", 4)
    assert "open the drawer" in prompt and "(1) the drawer is open" in prompt and "4 frames" in prompt
    assert "\\box{Success}" in prompt and "\\box{Failure}" in prompt and "step by step" in prompt
    assert "(1) the goal stated in the task" in judge.prompt("another task", 2)
    assert DEFAULT_PROMPT.count("{instruction}") == 1


def test_tiny_judge_counts_garbage_as_unparseable_failures(tiny_qwen):
    path, vocab = tiny_qwen
    judge = VLMJudgeReward(path, num_frames=3, n_votes=3, max_new_tokens=8, temperature=1.0, device="cpu")
    only_tokens(judge, vocab, [w for w in WORDS if w not in (SUCCESS_TOKEN, FAILURE_TOKEN)] + ["<|im_end|>"])
    rewards = judge(videos(), ["pick the cube"] * 3, torch.tensor([6, 2, 1]))
    assert rewards.tolist() == [0.0, 0.0, 0.0]
    assert judge.answers == 9 and judge.unparseable == 9
    assert len(judge.last_answers) == 3 and all(len(a) == 3 for a in judge.last_answers)
    assert any(a.strip() for answers in judge.last_answers for a in answers)  # the random model did say something


def test_tiny_judge_votes_on_parseable_answers(tiny_qwen):
    path, vocab = tiny_qwen
    judge = VLMJudgeReward(path, num_frames=2, n_votes=3, max_new_tokens=4, temperature=1.0, device="cpu")
    only_tokens(judge, vocab, [SUCCESS_TOKEN])
    assert judge(videos(2), ["pick"] * 2).tolist() == [1.0, 1.0]
    only_tokens(judge, vocab, [FAILURE_TOKEN])
    assert judge(videos(2), ["pick"] * 2).tolist() == [0.0, 0.0]
    assert judge.unparseable == 0 and judge.answers == 12
    only_tokens(judge, vocab, [SUCCESS_TOKEN, FAILURE_TOKEN])  # random verdicts: the reward is their majority
    rewards = judge(videos(3), ["pick"] * 3)
    expected = [float(majority_vote([parse_verdict(a) for a in answers])) for answers in judge.last_answers]
    assert rewards.tolist() == expected and judge.unparseable == 0


def test_tiny_judge_is_reproducible_and_greedy_at_zero_temperature(tiny_qwen):
    path, _ = tiny_qwen
    first = VLMJudgeReward(path, num_frames=2, n_votes=2, max_new_tokens=6, device="cpu", seed=3)
    second = VLMJudgeReward(path, num_frames=2, n_votes=2, max_new_tokens=6, device="cpu", seed=3)
    first(videos(2), ["pick"] * 2)
    second(videos(2), ["pick"] * 2)
    assert first.last_answers == second.last_answers
    greedy = VLMJudgeReward(path, num_frames=2, n_votes=5, max_new_tokens=6, temperature=0.0, device="cpu")
    greedy(videos(2), ["pick"] * 2)
    assert [len(a) for a in greedy.last_answers] == [1, 1] and greedy.answers == 2
