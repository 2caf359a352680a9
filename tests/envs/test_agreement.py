import numpy as np
import pytest
import torch

from lightning_prophrl.envs.agreement import cohen_kappa, confusion, divergence_psnr


def test_confusion_and_kappa_on_hand_counts():
    # CALIBRATION.md part 3's SFT row: both 2, real only 14, imagined only 1, neither 43 -> kappa 0.14
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
