"""Certified answers (randomized smoothing, Cohen et al. 2019) over the guard's own sampling.

- ``core``: ``Smoothed(guard, parser)``, whose ``predict`` / ``certify`` are PREDICT and CERTIFY, and their
  statistics on label counts;
- ``run``: certify a yes/no benchmark resumably and tabulate certified accuracy against radius.
"""

from smoothguard.lazy import lazy_exports

_EXPORTS = {
    "AnswerParser": "smoothguard.certify.core",
    "Certificate": "smoothguard.certify.core",
    "ChoiceParser": "smoothguard.answers",
    "DEFAULT_BATCH_SIZE": "smoothguard.certify.core",
    "Prediction": "smoothguard.certify.core",
    "RADIUS_UNITS": "smoothguard.certify.core",
    "RefusalParser": "smoothguard.answers",
    "Smoothed": "smoothguard.certify.core",
    "YesNoParser": "smoothguard.answers",
    "certified_radius": "smoothguard.certify.core",
    "certify_from_counts": "smoothguard.certify.core",
    "noisy_answers": "smoothguard.certify.core",
    "predict_from_counts": "smoothguard.certify.core",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
