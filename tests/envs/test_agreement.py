import numpy as np
import pytest
import torch

from lightning_prophrl.envs.agreement import (
    cohen_kappa,
    confusion,
    divergence_psnr,
    reward_agreement,
    score_video,
)
from lightning_prophrl.models.reward import PersistenceRule


def test_confusion_and_kappa_on_hand_counts():
    # The SFT row of a first world-model probe: both 2, real only 14, imagined only 1, neither 43 -> kappa 0.14
    real = np.array([1] * 2 + [1] * 14 + [0] * 1 + [0] * 43)
    imag = np.array([1] * 2 + [0] * 14 + [1] * 1 + [0] * 43)
    assert confusion(real, imag) == {"both": 2, "real_only": 14, "imagined_only": 1, "neither": 43}
    p_o = 45 / 60
    p_e = (16 / 60) * (3 / 60) + (44 / 60) * (57 / 60)
    assert cohen_kappa(real, imag) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert cohen_kappa(real, imag) == pytest.approx(0.14, abs=0.01)


def test_kappa_extremes():
    a = np.array([1, 0, 1, 0])
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(a, 1 - a) == -1.0
    assert cohen_kappa(np.ones(4), np.ones(4)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        confusion(a, a[:3])


def test_divergence_psnr_averages_the_episodes_alive_in_both_videos():
    real = torch.zeros(2, 4, 3, 2, 2)
    imagined = torch.zeros(2, 5, 3, 2, 2)
    imagined[0] += 0.2  # (0.2 / 2)^2 = 1e-2 -> 20 dB
    imagined[1] += 0.02  # 1e-4 -> 40 dB
    psnr = divergence_psnr(real, torch.tensor([3, 4]), imagined, torch.tensor([5, 1]))
    assert psnr == pytest.approx([30.0, 20.0, 20.0])  # frame 0: both episodes; frames 1-2: episode 0 only
    with pytest.raises(ValueError, match="do not match"):
        divergence_psnr(real, torch.tensor([1, 1]), imagined[:1], torch.tensor([1]))


def test_the_gates_persistence_rule_needs_k_consecutive_valid_frames():
    probs = torch.tensor([[0.95, 0.95, 0.2, 0.95, 0.95, 0.95],
                          [0.95, 0.95, 0.95, 0.1, 0.1, 0.1],
                          [0.2, 0.95, 0.95, 0.95, 0.95, 0.95],
                          [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]])  # fmt: skip
    lengths = torch.tensor([6, 6, 3, 6])  # episode 2 ends before its streak (padding is never scored)
    assert PersistenceRule(0.9, 3)(probs, lengths).tolist() == [True, True, False, False]  # 0.9 is not > 0.9
    assert PersistenceRule(0.9, 4)(probs, lengths).tolist() == [False, False, False, False]
    with pytest.raises(ValueError, match="k must be"):
        PersistenceRule(0.9, 0)


def test_reward_agreement_and_video_scoring():
    real = np.array([1, 1, 0, 0, 0])
    judged = np.array([1, 0, 1, 1, 0])
    out = reward_agreement(real, judged)
    assert out["precision"] == pytest.approx(1 / 3) and out["recall"] == pytest.approx(0.5)
    assert out["predicted_rate"] == pytest.approx(0.6) and out["kappa"] == pytest.approx(cohen_kappa(real, judged))
    assert reward_agreement(np.zeros(3), np.zeros(3))["precision"] is None
    video = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    seen = []

    def scorer(v):  # the newest frame's value, recording how much of the video it was shown
        seen.append(v.shape[1])
        return v[:, -1, 0, 0, 0]

    torch.testing.assert_close(score_video(scorer, video), torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]))
    assert seen == [2, 3, 4]


def test_rank_auc_counts_pairs_and_ties():
    from lightning_prophrl.envs.agreement import rank_auc

    assert rank_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert rank_auc([0.1, 0.5, 0.5, 0.9], [1, 1, 0, 0]) == pytest.approx((0 + 0 + 0.5 + 0) / 4)
    assert rank_auc([0.3, 0.4], [1, 1]) is None


def test_fit_threshold_maximizes_kappa_and_takes_the_widest_gap_among_ties():
    from lightning_prophrl.envs.agreement import fit_threshold

    score = np.array([0.10, 0.20, 0.60, 0.62, 0.90, 0.95])
    label = np.array([0, 0, 0, 1, 1, 1])
    fit = fit_threshold(score, label)
    assert fit["threshold"] == pytest.approx(0.61)  # the only cut that separates the classes: kappa 1
    assert fit["kappa"] == 1.0 and fit["episodes"] == 6
    # inseparable: a failure (0.6) above a success (0.5); the best cuts, 0.35 and 0.7, both reach kappa 2/3, and 0.35
    # sits in the wider gap (0.2 .. 0.5 against 0.6 .. 0.8)
    mixed = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.95])
    fit = fit_threshold(mixed, label)
    assert fit["threshold"] == pytest.approx(0.35)
    assert fit["kappa"] == pytest.approx(2 / 3) == cohen_kappa(label, mixed > 0.7)
    # a head that over-calls success (every score above 0.5) still ranks: the fitted cut recovers kappa 1
    fit = fit_threshold(np.array([0.7, 0.8, 0.97, 0.99]), np.array([0, 0, 1, 1]))
    assert fit["threshold"] == pytest.approx(0.885) and fit["kappa"] == 1.0
    assert fit_threshold(score, np.ones(6)) is None  # one class: nothing to fit
    with pytest.raises(ValueError, match="same length"):
        fit_threshold(score, label[:3])
