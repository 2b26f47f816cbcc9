"""Benchmark of the radiomics feature extraction per patient (`lamp.baselines.radiomics`).

Usage::

    .venv/bin/python benchmarks/bench_baselines_radiomics.py                # 3 small patients
    .venv/bin/python benchmarks/bench_baselines_radiomics.py --patients 5 --size small \\
        --spacing 2 --filters LoG Wavelet

Generates ``--patients`` synthetic patients (`lamp.synth`, ``--size``, seed 0) in a
temporary folder, then times `case_radiomics` (reading the PET and the reference lesion
mask, both regions, all feature classes) for each, with the settings given. Printed per
patient: grid shape, voxel size, number of lesions, tumour voxels and seconds; then the
median and the extrapolation to the paper's 229 patients.

Measured on the 2-core development machine (``small`` cohort, 6 mm PET, 3 patients):
original image at 4 mm, median 0.5 s per patient (≈ 2 min for 229 patients); at 2 mm,
1.3 s; with LoG (σ 2, 6 mm) and wavelet at 4 mm, 2-24 s, median 6 s (≈ 25 min). The
patient with lesions spread over the body is the slow one with filters (its whole tumour
volume has a whole-body bounding box). Rerun 2026-11-28 with the texture size guard (two
pyradiomics passes per region), 5 patients, original image at 4 mm, one other job on the
machine: median 0.41 s per patient (0.34-0.73 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lamp.baselines.radiomics import RadiomicsConfig, case_radiomics, feature_columns
from lamp.images import load_nifti
from lamp.synth.generate import SynthRequest, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--size", default="small")
    parser.add_argument("--spacing", type=float, default=4.0, help="mm; 0 keeps the PET grid")
    parser.add_argument("--bin-width", type=float, default=0.3)
    parser.add_argument("--filters", nargs="*", default=[], choices=["LoG", "Wavelet"])
    args = parser.parse_args()
    config = RadiomicsConfig(
        resampled_spacing_mm=args.spacing or None,
        bin_width=args.bin_width,
        filters=tuple(args.filters),
    )
    n_features = len(feature_columns(config))  # imports pyradiomics outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        cohort, work = Path(tmp) / "cohort", Path(tmp) / "work"
        n = max(args.patients, 5)  # lamp synth needs one patient per fold
        generate_cohort(
            SynthRequest(out=cohort, n_patients=n, seed=0, size=args.size, export_nnunet=False)
        )
        seconds = []
        for i in range(args.patients):
            pid = f"SYN{i:04d}"
            pet, affine = load_nifti(cohort / "cases" / pid / "pet.nii.gz")
            start = time.perf_counter()
            row = case_radiomics(cohort, work, pid, "manual", config)
            seconds.append(time.perf_counter() - start)
            les, _ = load_nifti(cohort / "cases" / pid / "lesions.nii.gz")
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            print(
                f"{pid}: grid {pet.shape}, voxel {spacing.round(2).tolist()} mm, "
                f"{row['n_lesions']} lesions, {int((les > 0).sum())} tumour voxels: "
                f"{seconds[-1]:.2f} s"
            )
    med = statistics.median(seconds)
    print(
        f"{n_features} features per patient, settings {config.extraction()}\n"
        f"median {med:.2f} s per patient -> about {229 * med / 60:.1f} min for 229 patients"
    )


if __name__ == "__main__":
    main()
