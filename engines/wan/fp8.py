"""fp8 (e4m3) linear layers for the Wan transformer blocks: Hopper's fp8 tensor cores, about twice
the bf16 GEMM rate, for the layers that hold nearly all of the transformer's FLOPs.

Weights are quantized once, per output channel; activations per token, on the fly (under
torch.compile the scaling fuses into the op before). On CUDA the product is one
`torch._scaled_mm` with row-wise scales and a bf16 output; elsewhere (CPU tests) the same
quantized numbers are multiplied in float32, so tests check the quantization, not the kernel.
Only the transformer blocks' linear layers are converted: the embeddings and the output head
stay in bf16. This trades accuracy for speed; check a real checkpoint's frames before serving it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> fp8 (M, K) and float32 scales (M, 1) with x ~= q * scale, per row."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


class Fp8Linear(nn.Module):
    """A frozen nn.Linear with fp8 weights (per output channel) and fp8 activations (per token)."""

    weight_fp8: torch.Tensor  # buffers
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", q)  # (out, in), row-major: its .t() is the column-major B _scaled_mm wants
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, scale = quantize_rows(x.reshape(-1, shape[-1]))
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else self.out_dtype
        if x.is_cuda:
            bias = None if self.bias is None else self.bias.to(dtype)
            y = torch._scaled_mm(
                q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias, out_dtype=dtype
            )
        else:
            w = self.weight_fp8.float() * self.weight_scale.t()
            y = (q.float() * scale) @ w.t()
            if self.bias is not None:
                y = y + self.bias.float()
            y = y.to(dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3"


def convert_blocks_to_fp8(transformer: nn.Module) -> int:
    """Replace every nn.Linear inside `transformer.blocks` whose sizes fit fp8 GEMMs (multiples of
    16) by an Fp8Linear; returns how many were replaced."""
    n = 0
    for block in cast(nn.ModuleList, transformer.blocks):
        for name, mod in list(block.named_modules()):
            if not isinstance(mod, nn.Linear) or mod.in_features % 16 or mod.out_features % 16:
                continue
            parent = block
            *path, leaf = name.split(".")
            for p in path:
                parent = getattr(parent, p)
            setattr(parent, leaf, Fp8Linear(mod))
            n += 1
    return n
