"""Found by nnU-Net's trainer search (``nnUNet_extTrainer``): LAMP's trainer classes."""

from lamp.segmentation.trainer import nnUNetTrainerLAMP, nnUNetTrainerLAMPPlain

__all__ = ["nnUNetTrainerLAMP", "nnUNetTrainerLAMPPlain"]
