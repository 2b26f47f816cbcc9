"""LAMP: lymphoma prognosis from baseline FDG PET/CT (lesion-anatomy context fusion and
attention-based multi-lesion aggregation)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
