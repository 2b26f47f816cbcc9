"""Lesion segmentation: the nnU-Net v2 raw dataset, the multimodal network and trainer.

``dataset`` writes nnU-Net's raw dataset (files only); ``network`` is LAMP's multimodal
network; ``trainer`` its nnU-Net trainers; ``nnunet`` drives nnU-Net (the one module that
imports ``nnunetv2``); ``instances`` and ``metrics`` turn predictions into lesions and
autoPET metrics; ``evaluate`` and ``cli`` tie them to ``lamp segment``. Nothing heavy is
imported with the package itself, so that ``lamp --help`` stays instant.
"""

from __future__ import annotations

__all__ = ["export_nnunet_raw"]


def __getattr__(name: str):
    if name == "export_nnunet_raw":
        from lamp.segmentation.dataset import export_nnunet_raw

        return export_nnunet_raw
    raise AttributeError(f"module 'lamp.segmentation' has no attribute {name!r}")
