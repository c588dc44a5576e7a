"""Small, real SAM-architecture models for tests and benchmarks (random weights, built here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def tiny_sam_config(image_size: int = 256, patch_size: int = 16, hidden_size: int = 32,
                    layers: int = 2, heads: int = 2, embed_dim: int = 32, window_size: int = 4):
    """Return a small SamConfig (vision ViT + SAM's prompt encoder and mask decoder)."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig
    from transformers import SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        mlp_dim=hidden_size * 4, image_size=image_size, patch_size=patch_size,
        output_channels=embed_dim, num_pos_feats=embed_dim // 2, window_size=window_size,
        global_attn_indexes=[layers - 1])
    prompt = SamPromptEncoderConfig(hidden_size=embed_dim, image_size=image_size,
                                    patch_size=patch_size)
    decoder = SamMaskDecoderConfig(hidden_size=embed_dim, num_hidden_layers=2,
                                   num_attention_heads=2, mlp_dim=embed_dim * 2,
                                   iou_head_hidden_dim=embed_dim)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                     mask_decoder_config=decoder.to_dict())


def make_tiny_model(model_dir: os.PathLike | str, image_size: int = 256, seed: int = 0,
                    info: Optional[dict] = None, **config_kwargs) -> Path:
    """Write a randomly initialised small SamModel (+ ``sat_seg.json`` if given) to a folder."""
    import torch
    from transformers import SamModel

    from sat_seg_ros.config import write_model_info

    torch.manual_seed(seed)
    model = SamModel(tiny_sam_config(image_size=image_size, **config_kwargs)).eval()
    # transformers initialises with std 0.02, which makes an untrained SAM's logits ~1e-5:
    # PyTorch's fan-in initialisation gives logits of order one, so comparisons mean something.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.reset_parameters()
    path = Path(model_dir)
    model.save_pretrained(path)
    if info is not None:
        write_model_info(path, info)
    return path
