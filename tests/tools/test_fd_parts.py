"""tools/eval/fd_parts.py: a motion vector back to a renderer pose (the clock, the body fit), and a motion-only run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("scipy")

from avatarcast.engines.avatar_world import BUILTIN_AVATARS
from avatarcast.engines.avatar_world.render import clip_poses
from avatarcast.engines.avatar_world.skeleton import keypoints_px, motion_vector
from tools.eval.fd_parts import body_vec, fit_body, main, pose_from_expression


def test_true_motion_back_to_its_pose():
    av = BUILTIN_AVATARS[1]
    q = clip_poses("angry", 16, 0x9000_1234)
    m = motion_vector(av, q[7], 0, 640, 0, 360)
    back = pose_from_expression(m, q[0])
    assert abs(back.fx_time - q[7].fx_time) < 0.01
    assert back.mouth_teeth == pytest.approx(q[7].mouth_teeth, abs=1e-6)
    x, err = fit_body(av, keypoints_px(av, q[7]), q[7], [body_vec(q[0])])
    assert err < 0.5  # pixels: angry has no IK, so the fit is exact
    assert abs(x[0] - q[7].body_dx) < 0.5  # (lift below 0 draws as 0: not every field is identifiable)


def test_motion_only_run(tmp_path):
    out = tmp_path / "fdp"
    assert (
        main(["--motion-only", "--n-builtin", "1", "--n-holdout", "0", "--emotions", "happy,sad", "--out", str(out)])
        == 0
    )
    r = json.loads((out / "report.json").read_text())
    assert r["n_clips"] == 2 and set(r["motion_per_emotion"]) == {"happy", "sad"}
    assert "Motion FD" in (out / "report.md").read_text()
