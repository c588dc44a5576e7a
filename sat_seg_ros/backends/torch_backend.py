"""PyTorch backend over a Hugging Face ``transformers`` SamModel."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from sat_seg_ros.backends import Backend, prompt_arrays

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


class SamTilePredictor(nn.Module):
    """SamModel with its prompt fixed: pixel_values (N, 3, S, S) -> low-res logits (N, m, m).

    The prompt encoder's output and the image-wide positional embedding do not depend on the
    tile, so they are computed once here and kept as buffers; the forward pass is the vision
    encoder plus the mask decoder only. This is also the graph that ONNX export writes.
    """

    def __init__(self, sam: nn.Module, prompt_mode: str = 'grid', grid_points: int = 4) -> None:
        super().__init__()
        self.vision_encoder = sam.vision_encoder
        self.mask_decoder = sam.mask_decoder
        input_size = sam.config.vision_config.image_size
        prompt = {key: None if value is None else torch.from_numpy(value)
                  for key, value in prompt_arrays(prompt_mode, input_size, grid_points).items()}
        device = next(sam.parameters()).device
        prompt = {key: None if value is None else value.to(device)
                  for key, value in prompt.items()}
        with torch.no_grad():
            sparse, dense = sam.prompt_encoder(input_masks=None, **prompt)
            position = sam.get_image_wide_positional_embeddings()
        self.has_sparse = sparse is not None
        self.register_buffer('sparse_prompt', sparse if self.has_sparse else torch.zeros(0))
        self.register_buffer('dense_prompt', dense[:1].contiguous())
        self.register_buffer('image_position', position)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the single-mask logits of every tile, shape (N, m, m)."""
        batch = pixel_values.shape[0]
        embeddings = self.vision_encoder(pixel_values).last_hidden_state
        sparse = self.sparse_prompt.expand(batch, -1, -1, -1) if self.has_sparse else None
        masks, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=self.image_position.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.dense_prompt,
            multimask_output=False)
        return masks[:, 0, 0]


def resolve_device(device: str) -> torch.device:
    """Return a torch.device for 'cpu', 'cuda' or 'cuda:N', or raise with the fix."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError("device=%r is not a torch device: use 'cpu', 'cuda' or 'cuda:N'"
                         % (device,)) from None
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device=%r but this torch build sees no CUDA GPU: use device 'cpu'"
                         % (device,))
    return resolved


class TorchBackend(Backend):
    """Runs the tile predictor with torch in inference mode; fp16/bf16 optional on a GPU."""

    name = 'torch'

    def __init__(self, model_dir: os.PathLike | str, device: str = 'cpu',
                 prompt_mode: str = 'grid', grid_points: int = 4, dtype: str = 'float32',
                 threads: Optional[int] = None) -> None:
        super().__init__(model_dir, prompt_mode, grid_points)
        from transformers import SamModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if dtype not in DTYPES:
            raise ValueError('dtype=%r is not one of %s' % (dtype, sorted(DTYPES)))
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        sam = SamModel.from_pretrained(model_dir).eval().to(self.device)
        self.input_size = int(sam.config.vision_config.image_size)
        self.module = SamTilePredictor(sam, prompt_mode, grid_points).eval().to(dtype=self.dtype)
        self.module.requires_grad_(False)

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) float32 for pre-processed tiles (N, 3, S, S)."""
        with torch.inference_mode():
            inputs = torch.from_numpy(pixel_values).to(self.device, self.dtype)
            return self.module(inputs).float().cpu().numpy()

    def close(self) -> None:
        """Drop the model; on a GPU the cached memory is returned to the driver."""
        self.module = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()
