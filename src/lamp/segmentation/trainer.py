"""nnU-Net v2 trainers for LAMP's multimodal network and for the plain comparator.

nnU-Net finds a trainer by its class name (``-tr`` / ``trainer_name``), in its own
package or in the folders of the ``nnUNet_extTrainer`` environment variable; LAMP points
that variable at :data:`TRAINERS_DIR` whenever it calls nnU-Net, so the classes below
are found for training and for inference alike. ``__init__`` keeps nnU-Net's explicit
signature because nnU-Net records a trainer's arguments by name.

* :class:`nnUNetTrainerLAMP` -- :class:`~lamp.segmentation.network.LampSegNet` built from
  the plans' ``PlainConvUNet`` settings (one input channel per modality), loss on the
  fused output and on every decoder, deep supervision as nnU-Net does it.
* :class:`nnUNetTrainerLAMPPlain` -- nnU-Net's own network with CT and PET as two input
  channels (the comparator of the paper), with the same schedule switches.

Both accept, after construction and before ``run_training()``, the schedule that LAMP's
configuration sets (``num_epochs``, ``num_iterations_per_epoch``,
``num_val_iterations_per_epoch``, ``initial_lr``) and ``disable_mirroring`` (no mirror
augmentation and no test-time mirroring: the CPU configuration), as plain attributes.
"""

from __future__ import annotations

import pydoc
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from lamp.segmentation.network import LampSegNet, MultiDecoderLoss

__all__ = ["TRAINERS_DIR", "nnUNetTrainerLAMP", "nnUNetTrainerLAMPPlain", "build_lamp_network"]

_CUDA = torch.device("cuda")  # nnU-Net's default device, kept in its signature

#: The folder given to nnU-Net as ``nnUNet_extTrainer``.
TRAINERS_DIR = Path(__file__).resolve().parent / "nnunet_trainers"


def _unwrap(network: nn.Module) -> nn.Module:
    mod = network.module if hasattr(network, "module") else network
    return getattr(mod, "_orig_mod", mod)  # torch.compile wrapper


def build_lamp_network(
    arch_kwargs: dict,
    requires_import: list[str] | tuple[str, ...],
    num_output_channels: int,
    deep_supervision: bool,
) -> LampSegNet:
    """A :class:`LampSegNet` from the ``architecture`` entry of an nnU-Net plan."""
    kwargs = dict(arch_kwargs)
    for key in requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    for drop in ("input_channels", "nonlin_first"):
        kwargs.pop(drop, None)
    return LampSegNet(num_classes=num_output_channels, deep_supervision=deep_supervision, **kwargs)


class _LampSchedule:
    """Mixin: the mirroring switch read by nnU-Net when it sets up augmentation."""

    disable_mirroring: bool = False

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802
        rot, do_dummy_2d, patch, mirror_axes = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        if self.disable_mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rot, do_dummy_2d, patch, mirror_axes


class nnUNetTrainerLAMP(_LampSchedule, nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net trainer of the LAMP multimodal segmentation network."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)

    @staticmethod
    def build_network_architecture(
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        if num_input_channels != 2:
            raise ValueError(
                f"the LAMP network needs exactly two input channels (CT, PET); the dataset "
                f"has {num_input_channels}"
            )
        return build_lamp_network(
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_output_channels,
            enable_deep_supervision,
        )

    def _build_loss(self):
        return MultiDecoderLoss(super()._build_loss())

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        _unwrap(self.network).set_deep_supervision(enabled)


class nnUNetTrainerLAMPPlain(_LampSchedule, nnUNetTrainer):  # noqa: N801
    """Plain nnU-Net (CT and PET as two input channels) with LAMP's schedule switches."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
