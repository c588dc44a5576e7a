"""The compact SAM family (a CNN image encoder feeding SAM's prompt encoder and mask decoder).

The NanoSAM / MobileSAM idea at this package's scale: a small ResNet-style encoder (BatchNorm,
residual stages at strides 8, 16 and 32, fused top-down into stride-8 embeddings) replaces
SAM's ViT, and ``transformers``' own ``SamPromptEncoder`` and ``SamMaskDecoder`` do the rest
(with ``fine_mask``, :class:`FineMaskDecoder`: SAM's decoder plus the encoder's stride-2 mask
features). A 256 tile gives 32x32 image embeddings, so the mask decoder's low-res output is
128x128 (one mask pixel per 2x2 tile pixels).

:class:`CnnSamModel` keeps ``SamModel``'s attribute names (``vision_encoder``, ``prompt_encoder``,
``mask_decoder``, ``shared_image_embedding``, ``config.vision_config.image_size``) and its
``forward`` signature, so every runtime path written for SAM drives it unchanged. A model folder
(``config.json`` with ``model_type`` 'sat_cnn_sam', ``model.safetensors``) loads with
:func:`load_sam_model`, which also loads any Hugging Face ``SamModel`` folder.

Imports torch and transformers: only the torch backend and the offline tools use this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig,
                                                       SamPromptEncoderConfig)
from transformers.models.sam.modeling_sam import (SamImageSegmentationOutput, SamMaskDecoder,
                                                  SamModel, SamPositionalEmbedding,
                                                  SamPromptEncoder, SamVisionEncoderOutput)

MODEL_TYPE = 'sat_cnn_sam'
ENCODER_TYPE = 'sat_cnn_encoder'
#: The encoder's output stride: 256 tiles -> 32x32 embeddings.
EMBEDDING_STRIDE = 8


class CnnEncoderConfig(PretrainedConfig):
    """The CNN image encoder; also carries what SAM's positional embedding reads from it."""

    model_type = ENCODER_TYPE
    base_config_key = 'vision_config'

    def __init__(self, image_size: int = 256, num_channels: int = 3,
                 stem_channels: Sequence[int] = (24, 32),
                 stage_channels: Sequence[int] = (64, 96, 128),
                 stage_blocks: Sequence[int] = (2, 2, 2), fuse_channels: int = 64,
                 output_channels: int = 64, scale: float = 1.0, stem_blocks: int = 0,
                 fine_lateral: bool = False, fuse_blocks: int = 0, fine_mask: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if image_size % 32:
            raise ValueError('image_size=%d must be a multiple of 32 (stride-32 stage)'
                             % image_size)
        if len(stem_channels) != 2 or len(stage_channels) != 3 or len(stage_blocks) != 3:
            raise ValueError('stem_channels needs 2 values, stage_channels and stage_blocks 3')
        self.image_size = int(image_size)
        self.num_channels = int(num_channels)
        self.stem_channels = [int(c) for c in stem_channels]
        self.stage_channels = [int(c) for c in stage_channels]
        self.stage_blocks = [int(b) for b in stage_blocks]
        for name, value in (('stem_blocks', stem_blocks), ('fuse_blocks', fuse_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError('%s=%r must be an integer >= 0' % (name, value))
        self.stem_blocks = int(stem_blocks)
        self.fuse_blocks = int(fuse_blocks)
        self.fine_lateral = bool(fine_lateral)
        self.fine_mask = bool(fine_mask)
        self.fuse_channels = int(fuse_channels)
        self.output_channels = int(output_channels)
        self.patch_size = EMBEDDING_STRIDE  # what SAM calls the embedding grid's stride
        self.num_pos_feats = self.output_channels // 2
        self.scale = float(scale)


class CnnSamConfig(PretrainedConfig):
    """A compact SAM: CNN encoder config + SAM prompt encoder and mask decoder configs."""

    model_type = MODEL_TYPE
    sub_configs = {'vision_config': CnnEncoderConfig,
                   'prompt_encoder_config': SamPromptEncoderConfig,
                   'mask_decoder_config': SamMaskDecoderConfig}

    def __init__(self, vision_config=None, prompt_encoder_config=None, mask_decoder_config=None,
                 initializer_range: float = 0.02, **kwargs) -> None:
        def build(value, config_class):
            if value is None:
                return config_class()
            return value if isinstance(value, config_class) else config_class(**value)

        self.vision_config = build(vision_config, CnnEncoderConfig)
        hidden = self.vision_config.output_channels
        size = self.vision_config.image_size
        prompt = dict(prompt_encoder_config or {}) if not isinstance(
            prompt_encoder_config, SamPromptEncoderConfig) else prompt_encoder_config.to_dict()
        prompt.update(hidden_size=hidden, image_size=size, patch_size=EMBEDDING_STRIDE)
        self.prompt_encoder_config = SamPromptEncoderConfig(
            **{k: v for k, v in prompt.items() if k in _init_names(SamPromptEncoderConfig)})
        decoder = dict(mask_decoder_config or {}) if not isinstance(
            mask_decoder_config, SamMaskDecoderConfig) else mask_decoder_config.to_dict()
        decoder.update(hidden_size=hidden)
        self.mask_decoder_config = SamMaskDecoderConfig(
            **{k: v for k, v in decoder.items() if k in _init_names(SamMaskDecoderConfig)})
        if hidden % 8:
            raise ValueError('output_channels=%d must be a multiple of 8 (the mask decoder '
                             'upscales to hidden/8 channels)' % hidden)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def _init_names(config_class) -> set:
    import inspect

    return set(inspect.signature(config_class.__init__).parameters) - {'self', 'kwargs'}


class ConvNormAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU; BatchNorm folds into the conv at export."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 act: bool = True) -> None:
        layers: List[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); a strided 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, stride)
        self.conv2 = ConvNormAct(cout, cout, 3, 1, act=False)
        self.shortcut = (ConvNormAct(cin, cout, 1, stride, act=False)
                         if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


@dataclasses.dataclass
class CnnEncoderOutput(SamVisionEncoderOutput):
    """SAM's encoder output plus, with ``fine_mask``, the stride-2 mask features.

    mask_features (N, output_channels / 8, S/2, S/2): what :class:`FineMaskDecoder` adds to
    the mask decoder's upscaled embedding. None without ``fine_mask``.
    """

    mask_features: Optional[torch.Tensor] = None


class CnnImageEncoder(nn.Module):
    """pixel_values (N, C, S, S) -> image embeddings (N, output_channels, S/8, S/8).

    Stride-4 stem (optionally followed by ``stem_blocks`` residual blocks at stride 4), residual
    stages at strides 8, 16 and 32, then a top-down fusion (each coarser stage upsampled and
    added to the finer one's 1x1 projection), so the stride-8 embedding sees the context of the
    whole tile. With ``fine_lateral`` the stride-4 features also enter the fusion (a strided 3x3
    projection), so detail that the stride-8 stage averages away, a small satellite's, reaches
    the embedding directly. ``fuse_blocks`` residual blocks after the fusion mix the scales
    non-linearly (without them, one 3x3 conv follows their linear sum). With ``fine_mask``
    the stride-4 features also go, through a 3x3 conv and a 2x2 transposed conv, to stride-2
    mask features for :class:`FineMaskDecoder` (the HQ-SAM idea at this scale): SAM's decoder
    draws each embedding cell's 4x4 block of mask pixels from that one cell (two stride-2
    transposed convs), so without them a satellite of a few cells is drawn from a few
    vectors. Returns a :class:`CnnEncoderOutput`, a ``SamVisionEncoderOutput`` like SAM's ViT.
    """

    def __init__(self, config: CnnEncoderConfig) -> None:
        super().__init__()
        c0, c1 = config.stem_channels
        self.stem = nn.Sequential(ConvNormAct(config.num_channels, c0, 3, 2),
                                  ConvNormAct(c0, c1, 3, 2))
        # An empty Sequential holds no weights, so older model folders load unchanged.
        self.stem_blocks = nn.Sequential(*(ResidualBlock(c1, c1)
                                           for _ in range(config.stem_blocks)))
        stages, cin = [], c1
        for cout, blocks in zip(config.stage_channels, config.stage_blocks):
            layers = [ResidualBlock(cin, cout, 2)]
            layers += [ResidualBlock(cout, cout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)
        fuse = config.fuse_channels
        self.lateral = nn.ModuleList(ConvNormAct(c, fuse, 1, act=False)
                                     for c in config.stage_channels)
        self.fine_lateral = (ConvNormAct(c1, fuse, 3, 2, act=False) if config.fine_lateral
                             else None)
        self.fuse = ConvNormAct(fuse, fuse, 3)
        self.fuse_blocks = nn.Sequential(*(ResidualBlock(fuse, fuse)
                                           for _ in range(config.fuse_blocks)))
        self.neck = nn.Conv2d(fuse, config.output_channels, 1)
        middle = max(4, c1 // 4)
        self.mask_features = (nn.Sequential(
            ConvNormAct(c1, middle, 3),
            nn.ConvTranspose2d(middle, config.output_channels // 8, kernel_size=2, stride=2))
            if config.fine_mask else None)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> CnnEncoderOutput:
        fine = x = self.stem_blocks(self.stem(pixel_values))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        fused = self.lateral[2](features[2])
        for level in (1, 0):
            fused = nn.functional.interpolate(fused, scale_factor=2.0, mode='nearest')
            fused = fused + self.lateral[level](features[level])
        if self.fine_lateral is not None:
            fused = fused + self.fine_lateral(fine)
        return CnnEncoderOutput(
            last_hidden_state=self.neck(self.fuse_blocks(self.fuse(fused))),
            mask_features=None if self.mask_features is None else self.mask_features(fine))


class FineMaskDecoder(SamMaskDecoder):
    """SAM's mask decoder, its upscaled embedding summed with the encoder's mask features.

    The same weights and computation as ``SamMaskDecoder`` (a state dict loads either way,
    less ``mask_features``' own weights, which the encoder holds), except that
    ``mask_features`` (N, hidden/8, 4e, 4e) join the second transposed conv's output before
    its activation: GELU(upscale_conv2(x) + mask_features). Zero features give SAM's output.
    """

    def forward(self, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
                sparse_prompt_embeddings: Optional[torch.Tensor],
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool,
                attention_similarity: Optional[torch.Tensor] = None,
                target_embedding: Optional[torch.Tensor] = None,
                mask_features: Optional[torch.Tensor] = None):
        if mask_features is None:
            raise ValueError("this mask decoder needs the encoder's mask_features "
                             '(CnnEncoderOutput.mask_features)')
        batch, channels, height, width = image_embeddings.shape
        points = 1 if sparse_prompt_embeddings is None else sparse_prompt_embeddings.shape[1]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.repeat(batch, points, 1, 1)
        if sparse_prompt_embeddings is not None:
            tokens = torch.cat((tokens, sparse_prompt_embeddings), dim=2)
        tokens = tokens.to(self.iou_token.weight.dtype)
        embeddings = (image_embeddings + dense_prompt_embeddings).repeat_interleave(points, 0)
        position = image_positional_embeddings.repeat_interleave(points, 0)
        tokens, embeddings = self.transformer(
            point_embeddings=tokens, image_embeddings=embeddings,
            image_positional_embeddings=position, attention_similarity=attention_similarity,
            target_embedding=target_embedding)
        iou_token, mask_tokens = tokens[:, :, 0, :], tokens[:, :, 1:1 + self.num_mask_tokens, :]
        embeddings = embeddings.transpose(2, 3).reshape(batch * points, channels, height, width)
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(embeddings)))
        upscaled = self.activation(self.upscale_conv2(upscaled)
                                   + mask_features.repeat_interleave(points, 0))
        hyper = torch.stack([mlp(mask_tokens[:, :, i, :]) for i, mlp in
                             enumerate(self.output_hypernetworks_mlps)], dim=2)
        _, channels, height, width = upscaled.shape
        upscaled = upscaled.reshape(batch, points, channels, height * width)
        masks = (hyper @ upscaled).reshape(batch, points, -1, height, width)
        iou = self.iou_prediction_head(iou_token)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, :, keep], iou[:, :, keep]


class CnnSamPreTrainedModel(PreTrainedModel):
    config_class = CnnSamConfig
    base_model_prefix = 'cnn_sam'
    main_input_name = 'pixel_values'
    input_modalities = ('image',)

    def _init_weights(self, module: nn.Module) -> None:
        """Fan-in (PyTorch default) init for conv/linear, norms at identity (SamLayerNorm too).

        SAM's N(0, 0.02) start leaves the mask logits near zero through the hypernetwork and
        the upscaler, and training from nothing then sits on a plateau (docs/training.md).
        """
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            module.reset_parameters()
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif isinstance(module, SamPositionalEmbedding):
            nn.init.normal_(module.positional_embedding, std=module.scale)


class CnnSamModel(CnnSamPreTrainedModel):
    """A SAM whose image encoder is a small CNN; ``SamModel``'s interface and outputs."""

    _tied_weights_keys = {
        'prompt_encoder.shared_embedding.positional_embedding':
            'shared_image_embedding.positional_embedding'}

    def __init__(self, config: CnnSamConfig) -> None:
        super().__init__(config)
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)
        self.vision_encoder = CnnImageEncoder(config.vision_config)
        self.prompt_encoder = SamPromptEncoder(config)
        config.mask_decoder_config._attn_implementation = 'eager'
        decoder = FineMaskDecoder if config.vision_config.fine_mask else SamMaskDecoder
        self.mask_decoder = decoder(config.mask_decoder_config)
        self.post_init()

    # SamModel's own code, which reads only ``config.prompt_encoder_config`` and the shared
    # positional embedding, both of which this model has under the same names.
    get_image_wide_positional_embeddings = SamModel.get_image_wide_positional_embeddings

    @torch.no_grad()
    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the image embeddings (N, hidden, S/8, S/8) of pre-processed pixels."""
        return self.vision_encoder(pixel_values).last_hidden_state

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor) -> dict:
        """Return what :meth:`forward` takes instead of pixels, as keyword arguments.

        ``image_embeddings`` and, with ``fine_mask``, ``mask_features``.
        """
        encoded = self.vision_encoder(pixel_values)
        inputs = {'image_embeddings': encoded.last_hidden_state}
        if encoded.mask_features is not None:
            inputs['mask_features'] = encoded.mask_features
        return inputs

    def forward(self, pixel_values: Optional[torch.Tensor] = None,
                input_points: Optional[torch.Tensor] = None,
                input_labels: Optional[torch.Tensor] = None,
                input_boxes: Optional[torch.Tensor] = None,
                input_masks: Optional[torch.Tensor] = None,
                image_embeddings: Optional[torch.Tensor] = None,
                multimask_output: bool = True, mask_features: Optional[torch.Tensor] = None,
                **kwargs) -> SamImageSegmentationOutput:
        """SamModel.forward's contract: pred_masks (N, P, M, m, m), iou_scores (N, P, M).

        A model with ``fine_mask`` given ``image_embeddings`` needs their ``mask_features``
        too (:meth:`get_image_features`).
        """
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError('pass exactly one of pixel_values and image_embeddings')
        if image_embeddings is None:
            encoded = self.vision_encoder(pixel_values)
            image_embeddings, mask_features = encoded.last_hidden_state, encoded.mask_features
        fine = {}
        if self.config.vision_config.fine_mask:
            if mask_features is None:
                raise ValueError('this model (fine_mask) needs the mask_features of its image '
                                 'embeddings: pass pixel_values, or both from '
                                 'get_image_features')
            fine['mask_features'] = mask_features
        batch = image_embeddings.shape[0]
        position = self.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        if input_points is not None and input_labels is None:
            input_labels = torch.ones_like(input_points[:, :, :, 0], dtype=torch.int)
        sparse, dense = self.prompt_encoder(input_points=input_points, input_labels=input_labels,
                                            input_boxes=input_boxes, input_masks=input_masks)
        masks, iou = self.mask_decoder(image_embeddings=image_embeddings,
                                       image_positional_embeddings=position,
                                       sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense,
                                       multimask_output=multimask_output, **fine)
        return SamImageSegmentationOutput(iou_scores=iou, pred_masks=masks)


AutoConfig.register(ENCODER_TYPE, CnnEncoderConfig, exist_ok=True)
AutoConfig.register(MODEL_TYPE, CnnSamConfig, exist_ok=True)
AutoModel.register(CnnSamConfig, CnnSamModel, exist_ok=True)

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
#: Model families a model folder's config.json may name, by ``model_type``.
FAMILIES = {'sam': SamModel, MODEL_TYPE: CnnSamModel}


def model_type(model_dir: os.PathLike | str) -> str:
    """Return the ``model_type`` in ``model_dir/config.json``, or raise ValueError saying why."""
    path = Path(model_dir) / 'config.json'
    if not path.is_file():
        raise FileNotFoundError('%s has no config.json: not a model folder' % model_dir)
    try:
        kind = json.loads(path.read_text()).get('model_type')
    except (ValueError, AttributeError) as error:
        raise ValueError('%s is not a readable JSON config (%s)' % (path, error)) from None
    if kind not in FAMILIES:
        raise ValueError('%s: model_type %r is not one this package runs (%s): give a Hugging '
                         'Face SamModel folder or a sat-seg compact model folder'
                         % (path, kind, ', '.join(sorted(FAMILIES))))
    return kind


def load_sam_model(model_dir: os.PathLike | str):
    """Load a SamModel or CnnSamModel folder (told apart by config.json), in eval mode."""
    kind = model_type(model_dir)
    if not any((Path(model_dir) / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            '%s has no weights (%s): an exported folder runs with --backend onnxruntime or '
            'tensorrt; for torch, export with --with-weights or use the original model folder'
            % (model_dir, ' or '.join(WEIGHT_FILES)))
    return FAMILIES[kind].from_pretrained(str(model_dir)).eval()


def build_cnn_sam(seed: int = 0, image_size: int = 256, stem_channels=(24, 32),
                  stage_channels=(64, 96, 128), stage_blocks=(2, 2, 2), fuse_channels: int = 64,
                  hidden: int = 64, decoder_mlp: int = 256, decoder_heads: int = 4,
                  stem_blocks: int = 0, fine_lateral: bool = False,
                  fuse_blocks: int = 0, fine_mask: bool = False) -> CnnSamModel:
    """Return a freshly initialised CnnSamModel (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    config = CnnSamConfig(
        vision_config={'image_size': image_size, 'stem_channels': list(stem_channels),
                       'stage_channels': list(stage_channels),
                       'stage_blocks': list(stage_blocks), 'fuse_channels': fuse_channels,
                       'output_channels': hidden, 'stem_blocks': stem_blocks,
                       'fine_lateral': fine_lateral, 'fuse_blocks': fuse_blocks,
                       'fine_mask': fine_mask},
        mask_decoder_config={'mlp_dim': decoder_mlp, 'num_attention_heads': decoder_heads,
                             'iou_head_hidden_dim': hidden})
    return CnnSamModel(config).eval()
