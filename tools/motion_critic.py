"""A patch critic for architecture 3's decoder (tools/train_motion.py `--gan-weight`): issue 16's adversarial loss.

Why: the decoder's L1 and edge losses reward the mean of where a stroke might be, which is drawn as a soft stroke
or a pale fringe where a limb crosses the body; the fidelity eval's detector tells such frames from the renderer's
at 48 pixels (89%). A PatchGAN critic trained from scratch beside the decoder (pix2pix, the autoencoders of latent
diffusion) penalizes exactly what looks drawn by a model. Its term is scaled to the reconstruction's gradient at
the decoder's output layer (`adaptive_weight`), so it never drowns the L1; its own step carries an R1 penalty on
the real side, which keeps a critic's gradient an informative size where the data is (R1, Mescheder et al. 2018).
The penalty is on each crop's mean patch logit: on the sum of a patch map's logits (`train_tiny.disc_step`'s form)
it is about (patches)^2 = 200,000 times stronger for a 192-pixel crop, and it flattened the critic to a constant
within 25 steps in the first GPU run (hinge exactly 1.0, R1 1e-5, the decoder's term weighted 1e-8).

The critic trains alone for `warmup` steps of its own before the decoder sees its term: a fresh critic's gradient
is noise. Its state (weights, optimizer, own step) rides in the decoder's `motion.pt`, so a resumed run goes on
with the same critic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tools.train_tiny import PatchDiscriminator, adaptive_weight


class MotionCritic:
    """The critic and its optimizer; `generator_term` for the decoder's loss, `step` after the decoder's step."""

    def __init__(self, device: torch.device, *, weight: float, lr: float = 2e-4, r1: float = 1.0, warmup: int = 300):
        self.device = device
        self.weight, self.r1, self.warmup = weight, r1, warmup
        self.net = PatchDiscriminator().to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.steps = 0  # the critic's own steps: the decoder's count starts from a kept checkpoint's

    @property
    def active(self) -> bool:
        """Whether the decoder's loss has the critic's term yet."""
        return self.steps >= self.warmup

    def generator_term(
        self, y: torch.Tensor, anchor: torch.Tensor, last: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted hinge term for the decoder, its adaptive weight): -D(y), scaled to `anchor`'s gradient at
        `last` (the decoder's output layer's weight) times `weight`. The critic's weights get no gradient here."""
        self.net.requires_grad_(False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            g = -self.net(y).float().mean()
        self.net.requires_grad_(True)
        lam = adaptive_weight(anchor, g, last) * self.weight
        return lam * g, lam  # tensors: a log reads them only on the steps it keeps (no GPU sync a step)

    def step(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One hinge step on (real, fake) crops, plus (r1 / 2) E ||grad_x mean D(real)||^2; returns (hinge, R1)."""
        real = real.detach().float().requires_grad_(self.r1 > 0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            d_real = self.net(real).float()
            d_fake = self.net(fake.detach().float()).float()
        hinge = 0.5 * (F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())
        pen = torch.zeros((), device=real.device)
        if self.r1 > 0:
            (grad,) = torch.autograd.grad(d_real.flatten(1).mean(1).sum(), real, create_graph=True)
            pen = 0.5 * self.r1 * grad.pow(2).flatten(1).sum(1).mean()
        self.opt.zero_grad(set_to_none=True)
        (hinge + pen).backward()
        self.opt.step()
        self.steps += 1
        return hinge.detach(), pen.detach()

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, st: dict) -> None:
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        self.steps = int(st["steps"])
