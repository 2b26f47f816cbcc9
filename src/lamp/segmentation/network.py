"""The multimodal lesion segmentation network of LAMP (paper §2.1, DESIGN.md).

One encoder (nnU-Net's ``PlainConvEncoder``) is applied with the **same weights** to the
CT channel and to the PET channel. Three decoders (nnU-Net's ``UNetDecoder`` blocks) read
the CT skips, the PET skips, and the per-stage concatenation of both (the fused
decoder, hence twice the channels: 64 in its last block where the others have 32). Each
decoder has a lesion head; a 1x1x1 convolution on the three last-block feature maps
gives a per-voxel softmax weight over the three probability maps, and the weighted sum
is the final lesion probability. The network returns log-probabilities as its logits,
so nnU-Net's losses and inference (softmax of the logits) see the fused probability.

Outputs
-------
* ``forward(x)`` with deep supervision on: a :class:`MultiDecoderOutput` -- a list, as
  nnU-Net expects, whose entry 0 is the fused full-resolution logits and entries 1.. are
  the fused decoder's lower-resolution deep-supervision logits; its ``aux`` attribute
  holds the three decoders' own deep-supervision lists, for the loss on every decoder
  (:class:`MultiDecoderLoss`).
* ``forward(x)`` with deep supervision off (inference): the fused logits.
* ``forward_features(x)``: the lesion probability (B, 1, ...) and the 128-channel
  feature map concat(fused 64, PET 32, CT 32) of paper Eq. 1 at input resolution.

Input: (B, 2, z, y, x) with channel 0 the CT and channel 1 the PET, normalised by
nnU-Net's preprocessing (the order of ``dataset.json``'s channel_names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

__all__ = ["LampSegNet", "MultiDecoderOutput", "MultiDecoderLoss", "N_FEATURES"]

#: Channels of the pooled feature vector: fused 64 + PET 32 + CT 32 (paper Eq. 1).
N_FEATURES = 128


@dataclass
class _EncoderSpec:
    """What ``UNetDecoder`` reads from an encoder, with channels scaled for the fused
    decoder. A plain object, so the decoders do not register the shared encoder as a
    sub-module of their own (its weights would appear three times in the state dict)."""

    output_channels: list[int]
    strides: list
    kernel_sizes: list
    conv_op: Any
    conv_bias: bool
    norm_op: Any
    norm_op_kwargs: dict | None
    dropout_op: Any
    dropout_op_kwargs: dict | None
    nonlin: Any
    nonlin_kwargs: dict | None

    @classmethod
    def of(cls, enc: PlainConvEncoder, factor: int = 1) -> _EncoderSpec:
        return cls(
            [factor * c for c in enc.output_channels],
            enc.strides,
            enc.kernel_sizes,
            enc.conv_op,
            enc.conv_bias,
            enc.norm_op,
            enc.norm_op_kwargs,
            enc.dropout_op,
            enc.dropout_op_kwargs,
            enc.nonlin,
            enc.nonlin_kwargs,
        )


class MultiDecoderOutput(list):
    """The fused deep-supervision outputs (a list, as nnU-Net expects) with the three
    decoders' own outputs in ``aux`` = (ct, pet, fused), each a list by resolution."""

    aux: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def _decode(dec: UNetDecoder, skips: list[torch.Tensor], all_scales: bool):
    """Run a ``UNetDecoder`` and also return its last block's feature map.

    Returns (logits by resolution, highest first; last-block features).
    """
    lres = skips[-1]
    seg: list[torch.Tensor] = []
    n = len(dec.stages)
    for s in range(n):
        x = dec.transpconvs[s](lres)
        x = torch.cat((x, skips[-(s + 2)]), 1)
        x = dec.stages[s](x)
        if all_scales or s == n - 1:
            seg.append(dec.seg_layers[s](x))
        lres = x
    return seg[::-1], lres


class LampSegNet(nn.Module):
    """Shared-weight CT/PET encoder, CT, PET and fused decoders, per-voxel fusion map.

    Parameters follow dynamic_network_architectures' ``PlainConvUNet`` (the kwargs of an
    nnU-Net plans' ``architecture.arch_kwargs``), with one input channel per modality.
    ``features_per_stage[0]`` must be 32 for the 128-d features of the paper.
    """

    def __init__(
        self,
        n_stages: int,
        features_per_stage: list[int],
        conv_op: type[nn.Module],
        kernel_sizes: list,
        strides: list,
        n_conv_per_stage: list[int] | int,
        num_classes: int,
        n_conv_per_stage_decoder: list[int] | int,
        conv_bias: bool = True,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if num_classes != 2:
            raise ValueError(
                f"LampSegNet segments lesion vs background: num_classes must be 2, got "
                f"{num_classes}"
            )
        self.encoder = PlainConvEncoder(
            1, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
            nonlin_kwargs, return_skips=True,
        )  # fmt: skip
        single, double = _EncoderSpec.of(self.encoder, 1), _EncoderSpec.of(self.encoder, 2)
        kw = dict(
            num_classes=num_classes,
            n_conv_per_stage=n_conv_per_stage_decoder,
            deep_supervision=deep_supervision,
        )
        self.decoder_ct = UNetDecoder(single, **kw)
        self.decoder_pet = UNetDecoder(single, **kw)
        self.decoder_fused = UNetDecoder(double, **kw)
        c0 = self.encoder.output_channels[0]
        self.feature_channels = (2 * c0, c0, c0)  # fused, PET, CT
        self.fusion_head = conv_op(4 * c0, 3, 1, 1, 0, bias=True)
        self.deep_supervision = deep_supervision

    # nnU-Net toggles deep supervision through the trainer (see trainer.py)
    def set_deep_supervision(self, enabled: bool) -> None:
        self.deep_supervision = enabled
        for dec in (self.decoder_ct, self.decoder_pet, self.decoder_fused):
            dec.deep_supervision = enabled

    def _branches(self, x: torch.Tensor, all_scales: bool):
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(
                f"LampSegNet expects (B, 2, z, y, x) input with CT then PET, got {tuple(x.shape)}"
            )
        b = x.shape[0]
        # one encoder, the same weights for both modalities: run them as one batch
        skips = self.encoder(torch.cat((x[:, 0:1], x[:, 1:2]), 0))
        skips_ct = [s[:b] for s in skips]
        skips_pet = [s[b:] for s in skips]
        skips_fused = [torch.cat((c, p), 1) for c, p in zip(skips_ct, skips_pet, strict=True)]
        seg_ct, f_ct = _decode(self.decoder_ct, skips_ct, all_scales)
        seg_pet, f_pet = _decode(self.decoder_pet, skips_pet, all_scales)
        seg_fu, f_fu = _decode(self.decoder_fused, skips_fused, all_scales)
        weights = torch.softmax(self.fusion_head(torch.cat((f_fu, f_pet, f_ct), 1)), dim=1)
        prob = (
            weights[:, 0:1] * torch.softmax(seg_fu[0], 1)
            + weights[:, 1:2] * torch.softmax(seg_pet[0], 1)
            + weights[:, 2:3] * torch.softmax(seg_ct[0], 1)
        )
        return prob, weights, (seg_ct, seg_pet, seg_fu), (f_fu, f_pet, f_ct)

    @staticmethod
    def _logits(prob: torch.Tensor) -> torch.Tensor:
        # log-probabilities are valid logits: softmax(log p) = p since p sums to one
        return torch.log(prob.clamp_min(1e-7))

    def forward(self, x: torch.Tensor):
        prob, _, segs, _ = self._branches(x, self.deep_supervision)
        fused = self._logits(prob)
        if not self.deep_supervision:
            return fused
        out = MultiDecoderOutput([fused, *segs[2][1:]])
        out.aux = segs
        return out

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lesion probability (B, 1, ...) and features (B, 128, ...) = concat(fused, PET, CT)."""
        prob, _, _, feats = self._branches(x, False)
        return prob[:, 1:2], torch.cat(feats, 1)

    @torch.no_grad()
    def fusion_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-voxel softmax weights (B, 3, ...) over the fused, PET and CT outputs."""
        return self._branches(x, False)[1]


class MultiDecoderLoss(nn.Module):
    """nnU-Net's (deep-supervised) loss on the fused output plus on every decoder.

    ``base`` is the loss nnU-Net's trainer builds (Dice + CE, wrapped for deep
    supervision). With a :class:`MultiDecoderOutput` the loss is
    ``base(fused) + aux_weight * (base(ct) + base(pet) + base(fused decoder))``; with a
    plain output (deep supervision off) it is ``base(output)``.
    """

    def __init__(self, base: nn.Module, aux_weight: float = 1.0) -> None:
        super().__init__()
        self.base = base
        self.aux_weight = aux_weight

    def forward(self, output, target):
        if isinstance(output, MultiDecoderOutput):
            loss = self.base(list(output), target)
            for seg in output.aux:
                loss = loss + self.aux_weight * self.base(seg, target)
            return loss
        return self.base(output, target)
