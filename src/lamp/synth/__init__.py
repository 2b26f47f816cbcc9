"""The built-in synthetic DLBCL PET/CT cohort (``lamp synth``).

``config`` holds every number of the generator; ``phantom`` the analytic whole-body
anatomy; ``disease`` the patient (clinical variables, lesions, survival); ``render`` the
CT and PET images; ``generate`` writes a cohort folder. See ``docs/synthetic.md``.
"""

from lamp.synth.config import SIZES, ConfigError, SynthConfig, load_synth_config
from lamp.synth.generate import SynthError, SynthRequest, generate_cohort, summarize

__all__ = [
    "SIZES",
    "ConfigError",
    "SynthConfig",
    "SynthError",
    "SynthRequest",
    "generate_cohort",
    "load_synth_config",
    "summarize",
]
