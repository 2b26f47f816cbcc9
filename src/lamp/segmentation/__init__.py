"""Lesion segmentation: the nnU-Net v2 raw dataset, the multimodal network and trainer.

`lamp.segmentation.dataset` only writes files (it does not import nnunetv2), so importing
this package stays light; the modules that run nnU-Net import it themselves.
"""

from __future__ import annotations

from lamp.segmentation.dataset import export_nnunet_raw

__all__ = ["export_nnunet_raw"]
