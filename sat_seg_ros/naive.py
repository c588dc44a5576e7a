"""The common tutorial pipeline: ``SamProcessor`` + ``SamModel``, one tile at a time.

``sat-seg bench`` and the parity tests compare the Segmenter against it; it uses the Pillow image
processor (the default one needs torchvision).

Same recipe as the Segmenter (resize the frame to the model size, 256 tiles, fixed prompt,
sigmoid, stitch, resize back), none of its optimisations.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from sat_seg_ros.backends import prompt_arrays


class NaivePipeline:
    """Per-tile ``SamProcessor`` -> ``SamModel`` -> ``post_process_masks``, as tutorials do it."""

    def __init__(self, model, model_size: int, tile_size: int, prompt_mode: str,
                 grid_points: int = 4) -> None:
        from transformers import SamProcessor
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

        self.model = model.eval().requires_grad_(False)
        self.model_size = model_size
        self.tile_size = tile_size
        input_size = model.config.vision_config.image_size
        self.processor = SamProcessor(image_processor=SamImageProcessorPil(
            size={'longest_edge': input_size},
            pad_size={'height': input_size, 'width': input_size}))
        # The tutorial prompt is given in tile pixels; the processor rescales it to the input.
        prompt = prompt_arrays(prompt_mode, tile_size, grid_points)
        self.prompt_kwargs = {}
        if prompt['input_points'] is not None:
            self.prompt_kwargs['input_points'] = prompt['input_points'][0].tolist()
        if prompt['input_boxes'] is not None:
            self.prompt_kwargs['input_boxes'] = prompt['input_boxes'].tolist()

    def tile_probability(self, tile, timings: Dict[str, float]) -> np.ndarray:
        """Return the (t, t) probability of one PIL tile, adding stage times to ``timings``."""
        import torch

        start = time.perf_counter()
        inputs = self.processor(images=tile, return_tensors='pt', **self.prompt_kwargs)
        for key in ('input_points', 'input_boxes'):
            if key in inputs:
                inputs[key] = inputs[key].float()
        processed = time.perf_counter()
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs['pixel_values'],
                                 input_points=inputs.get('input_points'),
                                 input_boxes=inputs.get('input_boxes'),
                                 multimask_output=False)
        inferred = time.perf_counter()
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks, inputs['original_sizes'], inputs['reshaped_input_sizes'],
            binarize=False)
        probability = torch.sigmoid(masks[0][0, 0]).numpy()
        timings['processor'] = timings.get('processor', 0.0) + processed - start
        timings['model'] = timings.get('model', 0.0) + inferred - processed
        timings['postprocess'] = timings.get('postprocess', 0.0) + time.perf_counter() - inferred
        return probability

    def probability(self, image: np.ndarray,
                    timings: Optional[Dict[str, float]] = None) -> np.ndarray:
        """Return the HxW probability of a uint8 gray or RGB frame."""
        from PIL import Image

        timings = {} if timings is None else timings
        start = time.perf_counter()
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        frame = Image.fromarray(rgb).resize((self.model_size, self.model_size),
                                            Image.BILINEAR)
        stitched = np.zeros((self.model_size, self.model_size), np.float32)
        t = self.tile_size
        timings['processor'] = time.perf_counter() - start
        for y in range(0, self.model_size, t):
            for x in range(0, self.model_size, t):
                tile = frame.crop((x, y, x + t, y + t))
                stitched[y:y + t, x:x + t] = self.tile_probability(tile, timings)
        start = time.perf_counter()
        height, width = image.shape[:2]
        back = np.asarray(Image.fromarray(stitched).resize((width, height), Image.BILINEAR))
        timings['postprocess'] = timings.get('postprocess', 0.0) + time.perf_counter() - start
        return back
