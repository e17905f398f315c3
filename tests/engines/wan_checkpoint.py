"""A tiny random Wan2.2-shaped checkpoint (same diffusers classes, saved with save_pretrained) for CPU tests."""

from __future__ import annotations

from pathlib import Path

import torch

Z, TEXT_DIM, H, W = 4, 16, 32, 64  # tiny VAE: spatial factor 8 -> latent 4x8; patch 2 -> 2x4 tokens
# the engine shape the export tests trace and serve (tests/engines/conftest.py wan_exported)
WAN_SHAPE = dict(steps=2, chunk_latent_frames=2, height=H, width=W, out_height=36, out_width=64)


def make_checkpoint(root: Path, text_encoder: bool = False, vae_res_blocks: int = 1) -> Path:
    """transformer/ + vae/; with text_encoder, also a tiny UMT5 encoder and a word-level tokenizer built offline;
    vae_res_blocks: tiny_vae's num_res_blocks."""
    torch.manual_seed(0)
    tr = tiny_transformer(num_layers=1)
    vae = tiny_vae(num_res_blocks=vae_res_blocks)
    tr.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    if text_encoder:
        add_text_encoder(root)
    return root


def tiny_transformer(num_layers: int):
    """The checkpoint's transformer shape: WanTransformer3DModel at width 16 (random weights of the current seed)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=Z,
        out_channels=Z,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def tiny_vae(num_res_blocks: int = 1):
    """The checkpoint's VAE: AutoencoderKLWan at base width 8 (random weights of the current seed);
    num_res_blocks=0: the same layout (mid block, temporal and spatial upsamplers) with one residual
    block per stage instead of two, for tests that compile it."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8,
        z_dim=Z,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=num_res_blocks,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 0.5, 1.0],
    )


def add_text_encoder(root: Path) -> None:
    """A 1-layer UMT5 encoder (width TEXT_DIM) and a tokenizer over the templates' words, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from avatarcast.templates import load_templates

    words = sorted({w for t in load_templates().values() for w in t.prompt.lower().replace(",", " ").split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(root / "tokenizer")
    torch.manual_seed(1)
    UMT5EncoderModel(
        UMT5Config(vocab_size=len(vocab), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    ).save_pretrained(root / "text_encoder")
