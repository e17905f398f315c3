"""The patch critic beside architecture 3's decoder (tools/motion_critic.py, `train_motion --gan-weight`)."""

from __future__ import annotations

import torch

from tools.motion_critic import MotionCritic


def test_the_critics_term_moves_the_decoder_and_not_the_critic():
    """The decoder's term reaches the decoder's weights only, with a positive adaptive weight; the critic's own
    step changes the critic."""
    torch.manual_seed(0)
    critic = MotionCritic(torch.device("cpu"), weight=0.5, warmup=1)
    assert not critic.active
    layer = torch.nn.Conv2d(4, 4, 3, padding=1)
    z, target = torch.randn(2, 4, 64, 64), torch.rand(2, 4, 64, 64) * 2 - 1
    y = layer(z)
    before = [p.detach().clone() for p in critic.net.parameters()]
    critic.step(target, y.detach())
    assert critic.active and critic.steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.net.parameters()))
    critic.net.zero_grad(set_to_none=True)
    term, lam = critic.generator_term(y, (y - target).abs().mean(), layer.weight)
    assert float(lam) > 0
    term.backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in critic.net.parameters())


def test_train_motion_keeps_its_critic_across_a_resume(tmp_path):
    """Two decoder steps with a critic (its term on after one step), then one more from the checkpoint: the
    critic's weights and its step count come back from motion.pt and go on."""
    from tools import train_motion

    ck = tmp_path / "ck"
    args = ["--work", str(tmp_path / "w"), "--ckpt", str(ck), "--minutes", "0", "--random-avatars", "0"]
    args += ["--variants", "1", "--per-clip", "1", "--batch", "2", "--crop", "64", "--workers", "1", "--no-eval"]
    args += ["--gan-weight", "0.5", "--d-warmup", "1", "--device", "cpu"]
    train_motion.main([*args, "--min-steps", "2"])
    first = torch.load(ck / "motion.pt")["critic"]
    assert first["steps"] == 2
    train_motion.main([*args, "--min-steps", "1"])
    second = torch.load(ck / "motion.pt")
    assert second["step"] == 3 and second["critic"]["steps"] == 3
    w0, w1 = (s["net"]["net.0.weight"] for s in (first, second["critic"]))
    assert not torch.equal(w0, w1)  # the resumed critic trained on from the kept one, not from a fresh one
