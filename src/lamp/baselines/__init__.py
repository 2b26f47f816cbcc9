"""The baselines of the paper's Table 1, each cross-validated on the cohort's one split.

`lamp.baselines.common` holds what they share (folds, outcome rule, output format).
"""
