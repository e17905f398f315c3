"""The fidelity eval's held-out avatars and seeds are disjoint from what training uses."""

from __future__ import annotations

import pytest

from avatarcast.engines.avatar_world import BUILTIN_AVATARS
from tools.eval import holdout
from tools.train_tiny import avatar_by_id, clip_specs, n_avatars


def _looks(av) -> dict:
    d = av.to_dict()
    d.pop("name")
    return d


def test_holdout_avatars_are_not_training_avatars():
    held = holdout.holdout_avatars(holdout.MAX_HOLDOUT)
    held_names = {a.name for a in held}
    held_looks = [_looks(a) for a in held]
    n_train = n_avatars(26) * 40  # 40x the shipped model's avatar count: room for the new training runs
    for i in range(n_train):
        av = avatar_by_id(i)
        assert av.name not in held_names
        assert _looks(av) not in held_looks, f"training avatar id {i} draws like a held-out avatar"
    # train_tiny's parametric ids map to random_avatar(10_000 + i): below the reserved range for any
    # id count a training run could use
    i_max = holdout.AVATAR_SEED_BASE - 10_000 - 1
    assert avatar_by_id(i_max).name == f"random-{10_000 + i_max}"
    assert 10_000 + i_max < holdout.AVATAR_SEED_BASE
    assert all(holdout.AVATAR_SEED_BASE <= int(a.name.split("-")[1]) < holdout.AVATAR_SEED_END for a in held)
    assert not held_names & {a.name.lower() for a in BUILTIN_AVATARS}


@pytest.mark.parametrize("spec_seed", [0, 1])  # train_tiny: seed 0 for the denoiser's clips, 1 for the autoencoder's
def test_holdout_motion_seeds_are_not_training_seeds(spec_seed):
    train = {s.seed for s in clip_specs(26, 6, seed=spec_seed)}
    assert max(train) < 1 << 31 <= holdout.MOTION_SEED_BASE  # clip_specs draws rng.integers(1 << 31)
    specs = holdout.reconstruction_frames(holdout.eval_avatars(6, 4))
    seeds = {f.seed for f in specs} | {holdout.heldout_seed("gen", k) for k in range(1000)}
    assert all(holdout.MOTION_SEED_BASE <= s < holdout.MOTION_SEED_END for s in seeds)
    assert not seeds & train


def test_reconstruction_frames_are_fixed_and_cover_every_emotion():
    from avatarcast.engines.avatar_world import EMOTIONS

    avs = holdout.eval_avatars(2, 1)
    a, b = holdout.reconstruction_frames(avs), holdout.reconstruction_frames(avs)
    assert a == b
    assert {f.emotion for f in a} == set(EMOTIONS)
    assert holdout.reconstruction_frames(avs, rerun=1) != a
    assert len(holdout.eval_avatars()) == len(BUILTIN_AVATARS) + 4
