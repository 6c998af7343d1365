"""A user's own module of unary networks, as a user would write it (issue 18's acceptance
networks): it defines the architectures and registers them, so that ``--import
user_networks.py`` (or importing it) lets ``load_model`` and every CLI build them.

Networks unlike the demo's, each with random weights (nothing is downloaded), kept tiny:

* :class:`UNet` - an encoder-decoder with skip connections and output stride 32, returning a
  tensor (or ``(masks, labels)`` with an auxiliary classification head), that refuses sizes
  that are not multiples of 32: segmentation-models-pytorch 0.6's ``smp.Unet`` (ResNet
  encoder, decoder blocks that upsample to the skip's size and concatenate it,
  ``check_input_shape``), rebuilt small here because smp needs torchvision, whose PyPI build
  for torch 2.13 is CUDA-only and does not import beside the CPU torch (see the test module).
* :class:`DeepLabV3Plus` - a dilated encoder (output stride 16) with ASPP (atrous separable
  convolutions at rates 12/24/36 and image pooling) and a decoder fusing 1/4-resolution
  features, whose logits stay at 1/4 (smp's ``DeepLabV3Plus(upsampling=1)``), returned as a
  torchvision-style dict ``{"out": logits, "aux": ...}``.
* ``segformer`` - the real ``transformers.SegformerForSemanticSegmentation`` built from a
  tiny ``SegformerConfig`` (no ``from_pretrained``): ``.logits`` at 1/4, needs >= 32 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from convcrf_deploy.model import register_unary


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2),
                  dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _BasicBlock(nn.Module):
    """ResNet basic block (as in ResNet-18), optionally strided or dilated."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(cin, cout, stride=stride, dilation=dilation),
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class _ResNetEncoder(nn.Module):
    """A ResNet-18-shaped encoder (one basic block per stage): features at strides 1 (the
    input, as smp returns it), 2, 4, 8, 16 and 32; ``dilate_last`` keeps the last stage at
    stride 16 with dilation 2 (DeepLab's output stride 16)."""

    def __init__(self, channels: tuple[int, ...], dilate_last: bool = False):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.stem = _conv_bn_relu(3, c1, kernel=7, stride=2)                       # 1/2
        self.layer1 = nn.Sequential(nn.MaxPool2d(3, 2, 1), _BasicBlock(c1, c2))    # 1/4
        self.layer2 = _BasicBlock(c2, c3, stride=2)                                # 1/8
        self.layer3 = _BasicBlock(c3, c4, stride=2)                                # 1/16
        self.layer4 = (_BasicBlock(c4, c5, dilation=2) if dilate_last
                       else _BasicBlock(c4, c5, stride=2))                         # 1/32
        self.output_stride = 16 if dilate_last else 32

    def forward(self, x):
        features = [x]
        for stage in (self.stem, self.layer1, self.layer2, self.layer3, self.layer4):
            features.append(stage(features[-1]))
        return features


def _check_input_shape(x: torch.Tensor, output_stride: int) -> None:
    """smp's SegmentationModel.check_input_shape (skipped while tracing, as smp does)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    h, w = x.shape[-2:]
    if h % output_stride or w % output_stride:
        new_h, new_w = (-(-h // output_stride) * output_stride,
                        -(-w // output_stride) * output_stride)
        raise RuntimeError(f"Wrong input shape height={h}, width={w}. Expected image height "
                           f"and width divisible by {output_stride}. Consider pad your images "
                           f"to shape ({new_h}, {new_w}).")


class UNet(nn.Module):
    """U-Net with a ResNet encoder of output stride 32 (smp.Unet, encoder_depth=5).

    Shapes: ``(N, 3, H, W)``, H and W multiples of 32 -> logits ``(N, C, H, W)``; with
    ``aux_classes`` a tuple ``(logits, labels (N, aux_classes))`` as smp's ``aux_params``.
    """

    def __init__(self, num_classes: int, encoder_channels=(8, 8, 16, 16, 32),
                 decoder_channels=(16, 16, 8, 8, 8), aux_classes: int | None = None):
        super().__init__()
        self.encoder = _ResNetEncoder(tuple(encoder_channels))
        skips = list(encoder_channels[::-1][1:]) + [0]       # 1/16, 1/8, 1/4, 1/2, none
        cin = encoder_channels[-1]
        self.blocks = nn.ModuleList()
        for skip, cout in zip(skips, decoder_channels):
            self.blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, cout),
                                             _conv_bn_relu(cout, cout)))
            cin = cout
        self.segmentation_head = nn.Conv2d(cin, num_classes, 3, padding=1)
        self.classification_head = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                  nn.Linear(encoder_channels[-1], aux_classes))
                                    if aux_classes else None)

    def forward(self, x):
        _check_input_shape(x, self.encoder.output_stride)
        features = self.encoder(x)
        sizes = [f.shape[-2:] for f in features][::-1][1:]    # 1/16 ... 1/1
        skips = features[1:-1][::-1] + [None]                  # 1/16 ... 1/2, none
        y = features[-1]
        for block, size, skip in zip(self.blocks, sizes, skips):
            y = F.interpolate(y, size=size, mode="nearest")
            y = block(y if skip is None else torch.cat([y, skip], dim=1))
        masks = self.segmentation_head(y)
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks


class _SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation,
                                   groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class _ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three separable 3x3 at ``rates``, image pooling."""

    def __init__(self, cin: int, cout: int, rates=(12, 24, 36)):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, kernel=1)] + [_SeparableConv(cin, cout, r) for r in rates])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(cin, cout, kernel=1))
        self.project = _conv_bn_relu(5 * cout, cout, kernel=1)

    def forward(self, x):
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (smp.DeepLabV3Plus with encoder_output_stride=16 and upsampling=1).

    Shapes: ``(N, 3, H, W)``, H and W multiples of 16 -> ``{"out": logits (N, C, H/4, W/4),
    "aux": logits (N, C, H/16, W/16)}`` (torchvision's segmentation-model convention).
    """

    def __init__(self, num_classes: int, encoder_channels=(8, 8, 16, 16, 32),
                 decoder_channels: int = 16):
        super().__init__()
        self.encoder = _ResNetEncoder(tuple(encoder_channels), dilate_last=True)
        self.aspp = nn.Sequential(_ASPP(encoder_channels[-1], decoder_channels),
                                  _SeparableConv(decoder_channels, decoder_channels))
        self.up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)
        self.highres = _conv_bn_relu(encoder_channels[1], 12, kernel=1)   # 48 in the paper
        self.fuse = _SeparableConv(decoder_channels + 12, decoder_channels)
        self.head = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_head = nn.Conv2d(encoder_channels[-1], num_classes, 1)

    def forward(self, x):
        _check_input_shape(x, self.encoder.output_stride)
        features = self.encoder(x)
        context = self.up(self.aspp(features[-1]))
        fused = self.fuse(torch.cat([context, self.highres(features[2])], dim=1))
        return {"out": self.head(fused), "aux": self.aux_head(features[-1])}


def segformer(num_classes: int, hidden_sizes=(8, 16, 32, 64), decoder_hidden_size: int = 32,
              depths=(1, 1, 1, 1), num_attention_heads=(1, 1, 2, 4)):
    """Hugging Face's SegformerForSemanticSegmentation (MiT encoder, all-MLP decoder) from a
    tiny config (MiT-b0: hidden_sizes (32, 64, 160, 256), decoder_hidden_size 256, depths
    (2, 2, 2, 2), num_attention_heads (1, 2, 5, 8)), random weights: returns
    ``SemanticSegmenterOutput`` whose ``.logits`` are ``(N, C, ceil(H/4), ceil(W/4))``; needs
    H, W >= 29 (its first stage reduces 8x8 blocks of the 1/4 map for attention)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_labels=num_classes, depths=list(depths),
                             hidden_sizes=list(hidden_sizes),
                             num_attention_heads=list(num_attention_heads),
                             sr_ratios=[8, 4, 2, 1], decoder_hidden_size=decoder_hidden_size)
    return SegformerForSemanticSegmentation(config)


register_unary("test_unet32", UNet)
register_unary("test_deeplabv3plus", DeepLabV3Plus)
register_unary("test_segformer", segformer)
