"""Compact SAM architectures that can be trained from nothing on a CPU.

Two families. The CNN-encoder SAMs (``CNN_ARCHITECTURES``, :mod:`sat_seg_ros.modeling`) feed
SAM's prompt encoder and mask decoder from a small ResNet-style encoder; they learn where the ViTs
trained from nothing stalled (docs/training.md) and are the default model's family.

The ViT presets (``ARCHITECTURES`` minus those) are plain ``transformers.SamModel``s
(``SamConfig``), loaded with ``SamModel.from_pretrained`` like any SAM checkpoint. They trade the
ViT-B encoder for a
small windowed ViT with a finer patch grid: a 256 tile with patch 8 gives 32x32 image embeddings,
so the mask decoder's low-res output is 128x128 (one mask pixel per 2x2 tile pixels instead of
SAM's 4x4 at 64x64), which small satellites need.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

#: Named architectures; values are keyword arguments of build_sam_config.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    # ~0.8 M parameters, ~3.2 MB fp32: the bundled default model's family. Windowed attention
    # only (8x8 tokens = 64x64 px): a global layer over 1024 tokens tripled the CPU step time;
    # the mask decoder's two-way attention still sees the whole tile.
    'sat-tiny': {'image_size': 256, 'patch_size': 8, 'vision_hidden': 64, 'vision_layers': 4,
                 'vision_heads': 4, 'window_size': 8, 'global_attn_indexes': (),
                 'decoder_hidden': 96, 'decoder_mlp': 384, 'decoder_heads': 4},
    # ~1.2 M parameters, ~5 MB fp32: patch 16 (16x16 tokens per 256 tile) makes a training step
    # ~4x cheaper than patch 8 on the CPU, so the same hours see ~4x more tiles; two global
    # layers are cheap at 256 tokens. Mask output 64x64 per tile, upsampled bilinearly.
    'sat-p16': {'image_size': 256, 'patch_size': 16, 'vision_hidden': 96, 'vision_layers': 6,
                'vision_heads': 4, 'window_size': 8, 'global_attn_indexes': (2, 5),
                'decoder_hidden': 96, 'decoder_mlp': 384, 'decoder_heads': 4},
    # ~0.31 M parameters, ~1.3 MB fp32: patch 8 (32x32 tokens, a 128x128 low-res mask) with a
    # narrow encoder and decoder (48 channels); 0.73 s per 16-tile training step on one thread.
    # Pixel AUC 0.72 on validation tiles after 800 steps (12 min) on 512 tiles; a 110-minute run
    # still did not detect satellites (docs/training.md, 2026-11-28 runs).
    'sat-p8s': {'image_size': 256, 'patch_size': 8, 'vision_hidden': 48, 'vision_layers': 4,
                'vision_heads': 4, 'window_size': 8, 'global_attn_indexes': (),
                'decoder_hidden': 48, 'decoder_mlp': 192, 'decoder_heads': 4},
    # ~2.2 M parameters, ~9 MB fp32.
    'sat-small': {'image_size': 256, 'patch_size': 8, 'vision_hidden': 96, 'vision_layers': 6,
                  'vision_heads': 4, 'window_size': 8, 'global_attn_indexes': (2, 5),
                  'decoder_hidden': 128, 'decoder_mlp': 512, 'decoder_heads': 8},
    # For tests: a few thousand parameters, milliseconds per step.
    'test-micro': {'image_size': 64, 'patch_size': 8, 'vision_hidden': 16, 'vision_layers': 1,
                   'vision_heads': 2, 'window_size': 0, 'global_attn_indexes': (),
                   'decoder_hidden': 16, 'decoder_mlp': 32, 'decoder_heads': 2},
}


#: CNN-encoder SAMs: keyword arguments of sat_seg_ros.modeling.build_cnn_sam.
CNN_ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    # 1.27 M parameters (5.1 MB fp32), 0.74 GFLOP per 256 tile (encoder 0.67): stride-4 stem,
    # residual stages of 64/96/128 channels at strides 8/16/32 fused to 64-channel stride-8
    # embeddings; mask decoder hidden 64. The default model's architecture up to stage 4.
    'sat-cnn': {'stem_channels': (24, 32), 'stage_channels': (64, 96, 128),
                'stage_blocks': (2, 2, 2), 'fuse_channels': 64, 'hidden': 64,
                'decoder_mlp': 256, 'decoder_heads': 4},
    # sat-cnn with four residual blocks (not two) at strides 16 and 32, where they cost few
    # FLOPs: 2.19 M parameters (8.8 MB fp32), 0.98 GFLOP per 256 tile. A sat-cnn checkpoint
    # deepens into it exactly (``deepen``), so training continues from where sat-cnn stopped.
    'sat-cnn-deep': {'stem_channels': (24, 32), 'stage_channels': (64, 96, 128),
                     'stage_blocks': (2, 4, 4), 'fuse_channels': 64, 'hidden': 64,
                     'decoder_mlp': 256, 'decoder_heads': 4},
    # sat-cnn with a third residual block at stride 8, where small satellites are decided (a
    # 20 px one at model size 512 covers 2-3 cells of the 32x32 embedding): 1.34 M parameters
    # (5.4 MB fp32), 0.89 GFLOP per 256 tile. A sat-cnn checkpoint deepens into it exactly.
    'sat-cnn-deep8': {'stem_channels': (24, 32), 'stage_channels': (64, 96, 128),
                      'stage_blocks': (3, 2, 2), 'fuse_channels': 64, 'hidden': 64,
                      'decoder_mlp': 256, 'decoder_heads': 4},
    # sat-cnn with a residual block at stride 4 after the stem and the stride-4 features fused
    # into the stride-8 embedding (a strided 3x3 projection): the fine detail of a satellite of
    # 15-30 px at model size 512, which the stride-8 stage averages over 2-4 cells, reaches the
    # mask decoder. 1.31 M parameters (5.2 MB fp32), 0.92 GFLOP per 256 tile. A sat-cnn
    # checkpoint deepens into it exactly. The bundled default model's architecture (stage 6).
    'sat-cnn-fine': {'stem_channels': (24, 32), 'stage_channels': (64, 96, 128),
                     'stage_blocks': (2, 2, 2), 'fuse_channels': 64, 'hidden': 64,
                     'decoder_mlp': 256, 'decoder_heads': 4, 'stem_blocks': 1,
                     'fine_lateral': True},
    # sat-cnn-fine with a third residual block at stride 32, where a block costs the fewest
    # FLOPs (8x8 cells per tile) and widens the context each embedding sees: roofs, roads and
    # field edges are told from satellites by their surroundings. 1.60 M parameters (6.4 MB
    # fp32), 0.96 GFLOP per 256 tile (a fourth block would make it 1.0002). A sat-cnn-fine
    # checkpoint deepens into it exactly.
    'sat-cnn-fine-ctx': {'stem_channels': (24, 32), 'stage_channels': (64, 96, 128),
                         'stage_blocks': (2, 2, 3), 'fuse_channels': 64, 'hidden': 64,
                         'decoder_mlp': 256, 'decoder_heads': 4, 'stem_blocks': 1,
                         'fine_lateral': True},
    # For tests: tens of thousands of parameters, a 64 input, milliseconds per step.
    'test-cnn': {'image_size': 64, 'stem_channels': (8, 8), 'stage_channels': (16, 16, 16),
                 'stage_blocks': (1, 1, 1), 'fuse_channels': 16, 'hidden': 16,
                 'decoder_mlp': 32, 'decoder_heads': 2},
    # For tests: test-cnn-fine widened (what sat-cnn-wide-ctx is to sat-cnn-fine-ctx).
    'test-cnn-wide': {'image_size': 64, 'stem_channels': (8, 12), 'stage_channels': (24, 24, 32),
                      'stage_blocks': (1, 1, 1), 'fuse_channels': 24, 'hidden': 16,
                      'decoder_mlp': 32, 'decoder_heads': 2, 'stem_blocks': 1,
                      'fine_lateral': True},
    # For tests: test-cnn-fine with blocks after the fusion (what sat-cnn-mix-ctx is to
    # sat-cnn-fine-ctx).
    'test-cnn-mix': {'image_size': 64, 'stem_channels': (8, 8), 'stage_channels': (16, 16, 16),
                     'stage_blocks': (1, 1, 1), 'fuse_channels': 16, 'hidden': 16,
                     'decoder_mlp': 32, 'decoder_heads': 2, 'stem_blocks': 1,
                     'fine_lateral': True, 'fuse_blocks': 2},
    # For tests: test-cnn deepened (what sat-cnn-deep is to sat-cnn).
    'test-cnn-deep': {'image_size': 64, 'stem_channels': (8, 8), 'stage_channels': (16, 16, 16),
                      'stage_blocks': (1, 2, 2), 'fuse_channels': 16, 'hidden': 16,
                      'decoder_mlp': 32, 'decoder_heads': 2},
    # For tests: test-cnn with the stride-4 block and lateral (what sat-cnn-fine is to sat-cnn).
    'test-cnn-fine': {'image_size': 64, 'stem_channels': (8, 8), 'stage_channels': (16, 16, 16),
                      'stage_blocks': (1, 1, 1), 'fuse_channels': 16, 'hidden': 16,
                      'decoder_mlp': 32, 'decoder_heads': 2, 'stem_blocks': 1,
                      'fine_lateral': True},
}
# Variants of sat-cnn-fine-ctx, the bundled model's architecture (each differs in one part).
# sat-cnn-fine-ctx with its three stages half as wide again (96, 144, 192 channels): the
# fine-ctx family fits its training scenes no better than fresh ones after some 60,000
# steps, and three added blocks at its width (sat-cnn-deep, -deep8, -fine-ctx) tied it, so
# this adds capacity across channels instead. 3.23 M parameters (12.9 MB fp32), 1.61 GFLOP
# per 256 tile (encoder 1.55; torch flop counter). A sat-cnn-fine-ctx checkpoint widens
# into it exactly (``widen``).
CNN_ARCHITECTURES['sat-cnn-wide-ctx'] = dict(CNN_ARCHITECTURES['sat-cnn-fine-ctx'],
                                             stage_channels=(96, 144, 192))
# sat-cnn-fine-ctx with a residual block after the fusion, at stride 8 and the fusion's
# 64 channels. The scales meet in a linear sum followed by one 3x3 conv, and SAM's mask
# decoder adds no per-pixel non-linearity to the image embedding (only attention to the
# prompt tokens), so whatever depth the stages have, the stride-8 detail and the stride-32
# context are combined almost linearly; stages deepened or widened before the fusion
# (sat-cnn-deep, -deep8, -fine-ctx, -wide-ctx) all tied. 1.68 M parameters (6.7 MB fp32),
# 1.11 GFLOP per 256 tile (torch flop counter; the block adds 0.15). A
# sat-cnn-fine-ctx checkpoint deepens into it exactly. Stage 13 on it tied stage 10.
CNN_ARCHITECTURES['sat-cnn-mix-ctx'] = dict(CNN_ARCHITECTURES['sat-cnn-fine-ctx'], fuse_blocks=1)
# sat-cnn-fine-ctx with stride-2 mask features from the stride-4 stem (``fine_mask``: a 3x3
# conv to 8 channels and a 2x2 transposed conv to the mask decoder's 8) added to SAM's
# upscaled embedding before its last activation, as HQ-SAM adds early ViT features. SAM's
# decoder draws the 4x4 block of mask pixels under each 8x8 embedding cell from that cell
# alone (two stride-2 transposed convs of kernel 2; the periodic pattern on its low
# probabilities), and a satellite under 40 px, which most wrong gray scenes hold, covers a few
# cells at model size 512. 1.61 M parameters (6.4 MB fp32), 0.98 GFLOP per 256 tile (0.02
# more). A sat-cnn-fine-ctx checkpoint deepens into it exactly (the new transposed conv
# starts at zero).
CNN_ARCHITECTURES['sat-cnn-hq-ctx'] = dict(CNN_ARCHITECTURES['sat-cnn-fine-ctx'], fine_mask=True)
# For tests: test-cnn-fine with the mask features (what sat-cnn-hq-ctx is to sat-cnn-fine-ctx).
CNN_ARCHITECTURES['test-cnn-hq'] = dict(CNN_ARCHITECTURES['test-cnn-fine'], fine_mask=True)
ARCHITECTURES.update(CNN_ARCHITECTURES)


def build_sam_config(image_size: int = 256, patch_size: int = 8, vision_hidden: int = 64,
                     vision_layers: int = 4, vision_heads: int = 4, window_size: int = 8,
                     global_attn_indexes=(3,), decoder_hidden: int = 96, decoder_mlp: int = 384,
                     decoder_heads: int = 4):
    """Return a ``transformers.SamConfig`` for a compact SAM with consistent sub-configs.

    The vision encoder's ``output_channels``, the prompt encoder's and the mask decoder's
    ``hidden_size`` must agree (``decoder_hidden``); the prompt encoder must know the image and
    patch size so its embedding grid matches the encoder's (``image_size // patch_size``).
    """
    from transformers import SamConfig

    if image_size % patch_size:
        raise ValueError('image_size=%d must be a multiple of patch_size=%d'
                         % (image_size, patch_size))
    if decoder_hidden % 8:
        raise ValueError('decoder_hidden=%d must be a multiple of 8 (the mask decoder '
                         'upscales to hidden/8 channels)' % decoder_hidden)
    vision = {'hidden_size': vision_hidden, 'output_channels': decoder_hidden,
              'num_hidden_layers': vision_layers, 'num_attention_heads': vision_heads,
              'image_size': image_size, 'patch_size': patch_size, 'window_size': window_size,
              'global_attn_indexes': list(global_attn_indexes),
              'num_pos_feats': decoder_hidden // 2, 'mlp_ratio': 4.0}
    prompt = {'hidden_size': decoder_hidden, 'image_size': image_size, 'patch_size': patch_size}
    decoder = {'hidden_size': decoder_hidden, 'mlp_dim': decoder_mlp,
               'num_attention_heads': decoder_heads, 'iou_head_hidden_dim': decoder_hidden}
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                     mask_decoder_config=decoder)


def build_model(architecture: str = 'sat-tiny', seed: int = 0, **overrides):
    """Return a freshly initialised ``SamModel`` of a named architecture (see ARCHITECTURES).

    Two departures from transformers' initialisation, both for training from nothing:
    linear and conv layers get PyTorch's fan-in initialisation instead of N(0, 0.02) (with 0.02
    the mask logits start near 1e-5 -- the hypernetwork and the upscaler multiply small numbers
    -- and the loss sits on a plateau for hundreds of steps; measured in docs/training.md), and
    the random-Fourier positional embedding is re-drawn with unit scale (the original SAM's
    choice) instead of std ``vision_hidden // 2``, which makes neighbouring positions'
    encodings unrelated.
    """
    import torch
    from transformers import SamModel

    if architecture not in ARCHITECTURES:
        raise ValueError('architecture=%r is not one of %s'
                         % (architecture, sorted(ARCHITECTURES)))
    kwargs = dict(ARCHITECTURES[architecture])
    kwargs.update(overrides)
    if architecture in CNN_ARCHITECTURES:
        from sat_seg_ros.modeling import build_cnn_sam

        return build_cnn_sam(seed=seed, **kwargs)
    torch.manual_seed(seed)
    model = SamModel(build_sam_config(**kwargs))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.reset_parameters()
        generator = torch.Generator().manual_seed(seed)
        embedding = model.shared_image_embedding.positional_embedding
        embedding.copy_(torch.randn(embedding.shape, generator=generator))
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(embedding)
    return model


def count_parameters(model) -> int:
    """Return the number of parameters of ``model`` (shared tensors counted once)."""
    seen = {}
    for parameter in model.parameters():
        seen[id(parameter)] = parameter.numel()
    return sum(seen.values())


def deepen(model, stage_blocks, seed: int = 0, stem_blocks: Optional[int] = None,
           fine_lateral: Optional[bool] = None, fuse_blocks: Optional[int] = None,
           fine_mask: Optional[bool] = None):
    """Return a copy of a CNN-encoder SAM grown to ``stage_blocks`` residual blocks per stage.

    Also, where given, to ``stem_blocks`` residual blocks at stride 4, with the stride-4
    lateral into the fusion (``fine_lateral``) and to ``fuse_blocks`` residual blocks after
    the fusion, and with the stride-2 mask features (``fine_mask``). Every added part starts
    as an identity: an appended block's last BatchNorm has zero scale and shift, so it returns
    ReLU(x) = x of the non-negative input it receives (the stem's, a stage's and the fusion's
    outputs all end in a ReLU), the lateral's BatchNorm is zero, so it adds nothing, and so is
    the mask features' last (transposed) conv, so the mask decoder's upscaled embedding is what
    it was. The grown model therefore computes exactly what ``model`` did and training picks
    up from there. Every other weight is copied; the new convs are drawn from ``seed``. Refuses
    anything but a CNN-encoder SAM, and removing any part it has.
    """
    import torch

    from sat_seg_ros.modeling import CnnSamConfig, CnnSamModel, MODEL_TYPE

    if getattr(model.config, 'model_type', None) != MODEL_TYPE:
        raise ValueError('only a CNN-encoder SAM (%s) can be deepened, not a %s'
                         % (MODEL_TYPE, getattr(model.config, 'model_type', type(model).__name__)))
    vision = model.config.vision_config
    have = list(vision.stage_blocks)
    want = [int(b) for b in stage_blocks]
    if len(want) != len(have) or any(w < h for w, h in zip(want, have)):
        raise ValueError('stage_blocks=%s cannot come from %s: a model is deepened, never cut'
                         % (want, have))
    # The encoder's single runs of blocks (after the stem, after the fusion): name -> (have, want).
    runs = {name: (getattr(vision, name), getattr(vision, name) if value is None else int(value))
            for name, value in (('stem_blocks', stem_blocks), ('fuse_blocks', fuse_blocks))}
    lateral_want = vision.fine_lateral if fine_lateral is None else bool(fine_lateral)
    have_mask = vision.fine_mask
    mask_want = have_mask if fine_mask is None else bool(fine_mask)
    if any(w < h for h, w in runs.values()) or (vision.fine_lateral and not lateral_want):
        raise ValueError('%s, fine_lateral=%s cannot come from %s, fine_lateral=%s: a model is '
                         'deepened, never cut'
                         % (', '.join('%s=%d' % (name, w) for name, (h, w) in runs.items()),
                            lateral_want,
                            ', '.join('%s=%d' % (name, h) for name, (h, w) in runs.items()),
                            vision.fine_lateral))
    if have_mask and not mask_want:
        raise ValueError('fine_mask=False cannot come from fine_mask=True: a model is '
                         'deepened, never cut')
    config = CnnSamConfig.from_dict(model.config.to_dict())  # to_dict copies
    config.vision_config.stage_blocks = want
    for name, (_, w) in runs.items():
        setattr(config.vision_config, name, w)
    config.vision_config.fine_lateral = lateral_want
    config.vision_config.fine_mask = mask_want
    torch.manual_seed(seed)
    deeper = CnnSamModel(config)
    missing, unexpected = deeper.load_state_dict(model.state_dict(), strict=False)
    if unexpected:
        raise ValueError('deepen: weights with no place in the deeper model: %s' % unexpected[:4])
    # Each added part by its state_dict prefix; every weight missing from ``model`` must be in one.
    encoder = deeper.vision_encoder
    added = {'vision_encoder.stages.%d.%d' % (stage, block): encoder.stages[stage][block]
             for stage, (h, w) in enumerate(zip(have, want)) for block in range(h, w)}
    for name, (h, w) in runs.items():
        added.update(('vision_encoder.%s.%d' % (name, block), getattr(encoder, name)[block])
                     for block in range(h, w))
    if lateral_want and not vision.fine_lateral:
        added['vision_encoder.fine_lateral'] = encoder.fine_lateral
    if mask_want and not have_mask:
        added['vision_encoder.mask_features'] = encoder.mask_features
    prefixes = tuple(name + '.' for name in added)
    not_carried = [name for name in missing if not name.startswith(prefixes)]
    if not_carried:
        raise ValueError('deepen: weights not carried over: %s' % sorted(not_carried)[:4])
    # A block's last BatchNorm, the lateral's only one, or the mask features' transposed conv.
    new_norms = [part.conv2[1] if hasattr(part, 'conv2') else part[-1] for part in added.values()]
    with torch.no_grad():
        for norm in new_norms:
            norm.weight.zero_()
            norm.bias.zero_()
    return deeper.train(model.training)


def widen(model, stage_channels, seed: int = 0, stem_channels=None,
          fuse_channels: Optional[int] = None):
    """Return a copy of a CNN-encoder SAM whose encoder has more channels, computing the same.

    ``stage_channels`` (and, where given, ``stem_channels`` and ``fuse_channels``) may only
    grow. Every encoder layer in this family is a conv followed by per-channel parts
    (BatchNorm, ReLU, sums, nearest upsampling), so a grown layer keeps its old weights in the
    leading slice, its new output channels are drawn fresh from ``seed``, and the weights by
    which an old output channel would read a new input channel are zero: the old channels
    compute exactly what they did, whatever the new ones hold, and the new ones get gradients
    from the first step (their readers' zero weights do not stop them). The encoder's output
    (the mask decoder's width) stays, as does everything after it. Refuses anything but a
    CNN-encoder SAM, and narrowing.
    """
    import torch

    from sat_seg_ros.modeling import CnnSamConfig, CnnSamModel, MODEL_TYPE

    if getattr(model.config, 'model_type', None) != MODEL_TYPE:
        raise ValueError('only a CNN-encoder SAM (%s) can be widened, not a %s'
                         % (MODEL_TYPE, getattr(model.config, 'model_type', type(model).__name__)))
    vision = model.config.vision_config
    config = CnnSamConfig.from_dict(model.config.to_dict())  # to_dict copies
    wanted = {'stage_channels': stage_channels, 'stem_channels': stem_channels,
              'fuse_channels': None if fuse_channels is None else [fuse_channels]}
    for name, want in wanted.items():
        have = getattr(vision, name)
        have = [have] if isinstance(have, int) else list(have)
        want = have if want is None else [int(c) for c in want]
        if len(want) != len(have) or any(w < h for w, h in zip(want, have)):
            raise ValueError('%s=%s cannot come from %s: a model is widened, never narrowed'
                             % (name, want, have))
        setattr(config.vision_config, name, want[0] if name == 'fuse_channels' else want)
    torch.manual_seed(seed)
    wider = CnnSamModel(config)
    old = model.state_dict()
    state = wider.state_dict()
    if set(old) != set(state):
        raise ValueError('widen: the models differ in more than width: %s'
                         % sorted(set(old) ^ set(state))[:4])
    # A transposed conv's weight is (in, out, ...): the zeroed block is the other one.
    transposed = {name + '.weight' for name, module in wider.named_modules()
                  if isinstance(module, torch.nn.ConvTranspose2d)}
    with torch.no_grad():
        for name, target in state.items():
            source = old[name]
            if source.shape == target.shape:
                target.copy_(source)
                continue
            if source.dim() != target.dim() or not name.startswith('vision_encoder.'):
                raise ValueError('widen: %s cannot grow from %s to %s'
                                 % (name, tuple(source.shape), tuple(target.shape)))
            target[tuple(slice(0, n) for n in source.shape)] = source
            if name in transposed and target.shape[0] > source.shape[0]:
                target[source.shape[0]:, :source.shape[1]] = 0  # old outputs ignore new inputs
            elif target.dim() > 1 and target.shape[1] > source.shape[1]:
                target[:source.shape[0], source.shape[1]:] = 0  # old outputs ignore new inputs
    wider.load_state_dict(state)
    return wider.train(model.training)
