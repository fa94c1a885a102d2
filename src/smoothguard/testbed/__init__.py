"""The testbed: small real LLaVA models trained on synthetic scenes, their benchmarks, a denoiser and the demo.

The modules hold code; ``ASSETS`` (``testbed/assets/``) holds the data that ships with them: the
checkpoints ``checkpoint/`` (``testbed``) and ``surrogate/`` (``testbed-surrogate``), the denoiser
``denoiser/`` (``testbed-denoiser``) and the demo's adversarial images ``attacks/``.
"""

from pathlib import Path

#: The testbed's shipped data (no code): checkpoints, denoiser weights and attack images.
ASSETS = Path(__file__).resolve().parent / "assets"
