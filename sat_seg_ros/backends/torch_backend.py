"""PyTorch backend over a Hugging Face ``transformers`` SamModel or a compact CNN-encoder SAM."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from sat_seg_ros.backends import Backend, prompt_arrays

#: Largest model input treated as compact (CPU workers and a frozen graph by default).
COMPACT_INPUT_SIZE = 512

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
        encoded = self.vision_encoder(pixel_values)
        return self.decode(encoded.last_hidden_state, getattr(encoded, 'mask_features', None))

    def decode(self, embeddings: torch.Tensor,
               mask_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return the single-mask logits (N, m, m) of image embeddings (N, hidden, e, e).

        ``mask_features``: the encoder's, for a compact SAM with ``fine_mask``.
        """
        batch = embeddings.shape[0]
        fine = {} if mask_features is None else {'mask_features': mask_features}
        sparse = self.sparse_prompt.expand(batch, -1, -1, -1) if self.has_sparse else None
        masks, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=self.image_position.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.dense_prompt,
            multimask_output=False, **fine)
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


def freeze_predictor(module: nn.Module, input_size: int):
    """Return (TorchScript-frozen module, True), or (module, False) where tracing fails.

    A frozen trace folds the fixed prompt and positional buffers into the graph and runs the
    whole forward pass in C++, without the GIL, which the concurrent CPU workers need: measured
    ~10-15 % faster per frame on the 2-core machine (README, Measured results). The trace keeps
    the batch dimension dynamic; a model it cannot trace runs eagerly, with a log line.
    """
    import logging
    import warnings

    example = torch.zeros(2, 3, input_size, input_size)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            traced = torch.jit.trace(module, example, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            reference = module(example[:1])
            if not torch.allclose(frozen(example[:1]), reference, rtol=1e-4, atol=1e-4):
                raise RuntimeError('frozen graph disagrees with the eager model')
    except Exception as error:  # noqa: B902 - any tracing failure means: run eagerly
        logging.getLogger(__name__).info('running the model eagerly (TorchScript freeze '
                                         'failed: %s)', error)
        return module, False
    return frozen, True


class TorchBackend(Backend):
    """Runs the tile predictor with torch in inference mode; fp16/bf16 optional on a GPU.

    On the CPU, for compact models (input <= 512), a batch of tiles is split into ``workers``
    chunks that run concurrently, each on one intra-op thread, through a frozen TorchScript
    graph (which releases the GIL for the whole forward pass). A compact model's small matrices
    keep one OpenMP team of all cores waiting on itself; measured on the 2-core development
    machine, 4 tiles of the bench's small model took ~38 ms as 2 workers x 1 thread against
    ~40-60 ms as one batch on 2 threads and ~70 ms on 1 thread (README, Measured results).
    ``workers=1`` and ``freeze=False`` restore plain eager batches.
    """

    name = 'torch'

    def __init__(self, model_dir: os.PathLike | str, device: str = 'cpu',
                 prompt_mode: str = 'grid', grid_points: int = 4, dtype: str = 'float32',
                 threads: Optional[int] = None, workers: Optional[int] = None,
                 freeze: Optional[bool] = None) -> None:
        super().__init__(model_dir, prompt_mode, grid_points)
        from transformers.utils import logging as hf_logging

        from sat_seg_ros.modeling import load_sam_model

        hf_logging.disable_progress_bar()
        if dtype not in DTYPES:
            raise ValueError('dtype=%r is not one of %s' % (dtype, sorted(DTYPES)))
        if workers is not None and int(workers) < 0:
            raise ValueError('workers=%r must be >= 0 (0 = automatic)' % (workers,))
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        sam = load_sam_model(model_dir).to(self.device)
        self.input_size = int(sam.config.vision_config.image_size)
        self.module = SamTilePredictor(sam, prompt_mode, grid_points).eval().to(dtype=self.dtype)
        self.module.requires_grad_(False)
        self.eager = self.module  # the nn.Module (e.g. for FLOP counting; a frozen graph hides it)
        self.frozen = False
        # Compact models (input <= 512, e.g. 256-input tile models) gain from workers and a
        # frozen graph; SAM ViT-B/L/H layouts (1024 input) have matrices large enough for one
        # team of all threads (workers measured 0.77x the tutorial pipeline for ViT-B against
        # 0.94x for one batch on 2 threads), and tracing them costs a full forward pass.
        compact = self.input_size <= COMPACT_INPUT_SIZE
        if freeze is None:
            freeze = compact
        if freeze and self.device.type == 'cpu' and self.dtype == torch.float32:
            self.module, self.frozen = freeze_predictor(self.module, self.input_size)
        cores = int(threads) if threads else torch.get_num_threads()
        if self.device.type != 'cpu':
            workers = 1
        elif not workers:
            workers = min(cores, 4) if compact else 1
        self.workers = max(1, int(workers))
        self.worker_threads = max(1, cores // self.workers)
        self._pool = None
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix='sat_seg_tiles')

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(inputs)

    def _run_chunk(self, inputs: torch.Tensor) -> torch.Tensor:
        # OpenMP's thread count is per calling thread: set it on the worker itself.
        torch.set_num_threads(self.worker_threads)
        return self._run(inputs)

    def run_batch(self, pixel_values: np.ndarray) -> np.ndarray:
        """Return low-res logits (N, m, m) float32 for pre-processed tiles (N, 3, S, S)."""
        inputs = torch.from_numpy(pixel_values).to(self.device, self.dtype)
        if self._pool is None or len(inputs) < 2:
            return self._run(inputs).float().cpu().numpy()
        chunks = torch.chunk(inputs, min(self.workers, len(inputs)))
        previous = torch.get_num_threads()
        try:
            futures = [self._pool.submit(self._run_chunk, chunk) for chunk in chunks[1:]]
            outputs = [self._run_chunk(chunks[0])] + [future.result() for future in futures]
        finally:
            torch.set_num_threads(previous)  # the caller's setting, e.g. for other models
        return torch.cat(outputs).float().numpy()

    def gflop(self, tiles: np.ndarray) -> float:
        """Return the model's GFLOP for tiles (N, t, t, 3 or 1), counted by torch.

        ``torch.utils.flop_counter`` runs on the eager module: a frozen graph hides its operators.
        """
        from torch.utils.flop_counter import FlopCounterMode

        from sat_seg_ros.backends import preprocess_tiles

        pixels = torch.from_numpy(preprocess_tiles(tiles, self.input_size))
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            self.eager(pixels.to(self.device, self.dtype))
        return counter.get_total_flops() / 1e9

    def describe(self) -> str:
        """Return a one-line description, with the CPU worker layout."""
        text = super().describe()
        if self.device.type == 'cpu':
            text += ', %d worker(s) x %d thread(s)%s' % (
                self.workers, self.worker_threads, ', frozen graph' if self.frozen else '')
        return text

    def close(self) -> None:
        """Drop the model and the worker threads; on a GPU cached memory goes to the driver."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.module = self.eager = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()
