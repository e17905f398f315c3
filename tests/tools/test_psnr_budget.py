"""tools/eval/psnr_budget.py: what the PSNR target asks of a drawing, on a real renderer frame."""

from scipy import ndimage as ndi

from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.fidelity import pose_at, render_frame, sample_variation
from tools.eval.psnr_budget import error_shares, renderer_ceilings


def _frame():
    s = holdout.reconstruction_frames(holdout.eval_avatars(1, 0), 1)[0]
    r = render_frame(s.avatar, pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity))
    return fm.premultiplied(r), fm.avatar_mask(r)


def test_the_further_a_frame_moves_the_lower_it_scores():
    c = renderer_ceilings(*_frame())
    assert c["shift_0.25px"] > c["shift_0.5px"] > c["shift_1.0px"]
    assert c["resampled_0.25px"] > c["resampled_0.5px"]
    assert c["shift_1.0px"] < 30.0  # a whole pixel off is far below the target


def test_a_one_pixel_move_is_all_edge_error_and_forgiven_by_the_tolerance():
    a, mask = _frame()
    moved = ndi.shift(a, (1, 0, 0), order=0)
    s = error_shares(a, moved, mask)
    assert s["edge_error_share"] > 0.9
    assert s["psnr_one_pixel_tolerance_db"] > s["psnr_db"] + 15
    flat = error_shares(a, a + 0.05 * mask[..., None], mask)  # a colour error everywhere
    assert flat["edge_error_share"] < 0.7
    assert abs(flat["psnr_one_pixel_tolerance_db"] - flat["psnr_db"]) < 3
