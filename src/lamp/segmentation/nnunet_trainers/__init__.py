"""The folder LAMP gives nnU-Net as ``nnUNet_extTrainer`` (see lamp.segmentation.trainer)."""
