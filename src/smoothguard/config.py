"""``GuardConfig``: every setting of SmoothGuard in one frozen, validated dataclass.

Each field's ``metadata["help"]`` is the help text of its command-line option; ``smoothguard.cli.options``
builds the options of every command from these fields, so a setting is declared once, here.
Importing this module costs nothing heavy (no torch), so the command line checks options before any
model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from smoothguard.answers import check_parser_name
from smoothguard.errors import ConfigError, check_int, check_seed
from smoothguard.noise import DEFAULT_SIGMA, NOISE_SPACES, check_purifier_space, validate_sigma
from smoothguard.sampling import AdaptiveSampling

#: How the candidates are aggregated: the paper's k-means over answer embeddings, or a majority vote over
#: answers parsed into discrete labels (``parser``).
VOTES = ("cluster", "parsed")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class GuardConfig:
    """How SmoothGuard answers (see ``smoothguard.guard.SmoothGuard``).

    ``sigma``: noise std in ``noise_space`` units (``smoothguard.noise``); ``None`` = the space's default
    (``DEFAULT_SIGMA``: the paper's 0.1 normalized, its CLIP equivalent 0.027 in pixel space, 0.1 waveform),
    at most ``MAX_SIGMA`` of the space.
    ``num_copies``: noisy copies besides the clean candidate; 0 = the undefended baseline.
    ``noise_space``: ``normalized`` | ``pixel`` | ``waveform``; ``None`` = the model's default, which
    ``SmoothGuard`` resolves (:meth:`resolve`: ``guard.config``'s space and sigma are always concrete).
    ``seed``: noise (per-copy rule of ``smoothguard.noise``) and k-means seed, in [0, 2**32).
    ``clamp``: clamp noisy pixels to [0, 1] and waveforms to [-1, 1] (not used in normalized space).
    ``num_clusters``: k of k-means (paper: 2). ``embedder``: ``None`` (packaged all-MiniLM-L6-v2),
    ``"minilm"`` or ``"roberta-mean:PATH"``. ``batch_size``: most candidates per ``generate`` call
    (``None``: all candidates of all queries in one). ``adaptive``: ``None`` (the paper: answer every
    copy) or an ``AdaptiveSampling`` stopping rule (``True`` = its defaults).
    ``purifier``: ``None`` or a purifier spec (``smoothguard.purify``: ``testbed-denoiser``,
    ``diffusion:SOURCE[@K]``, a folder) run on every noisy copy before the model (denoised smoothing); pixel
    space only, the default space when a purifier is set. ``purify_clean``: purify the clean candidate too.
    ``vote``: ``cluster`` (the paper's k-means) or ``parsed`` (majority over ``parser``'s labels: ``yes-no``,
    ``choice``, ``refusal``; ``smoothguard.answers``).
    """

    sigma: float | None = field(
        default=None,
        metadata=_help(
            "noise std in the units of --noise-space (default: 0.1 normalized, the paper's; 0.027 pixel, its CLIP "
            "equivalent; 0.1 waveform)"
        ),
    )
    num_copies: int = field(default=10, metadata=_help("noisy copies besides the clean one (default: %(default)s)"))
    noise_space: str | None = field(
        default=None, metadata=_help("default: the model's (normalized for local image models, waveform for audio)")
    )
    seed: int = field(default=0, metadata=_help("noise and k-means seed (default: %(default)s)"))
    clamp: bool = field(default=True, metadata=_help("do not clamp noisy pixels/waveforms"))
    num_clusters: int = field(default=2, metadata=_help("k of k-means over the answers (default: %(default)s)"))
    embedder: str | None = field(
        default=None, metadata=_help("answer embedder: minilm (default, packaged) or roberta-mean:PATH")
    )
    batch_size: int | None = field(
        default=None, metadata=_help("most candidates per generate call (default: %(default)s; None = all in one)")
    )
    adaptive: AdaptiveSampling | None = field(
        default=None, metadata=_help("stop answering copies once the vote is decided (adaptive sampling)")
    )
    purifier: str | None = field(
        default=None,
        metadata=_help(
            "denoise every noisy copy before the model (pixel space): testbed-denoiser, diffusion:HUB_ID_OR_FOLDER"
            "[@STEPS], or a purifier folder (default: none)"
        ),
    )
    purify_clean: bool = field(default=True, metadata=_help("do not purify the clean candidate"))
    vote: str = field(
        default="cluster",
        metadata=_help("aggregate by k-means over answer embeddings (cluster, the paper's) or by parsed answers"),
    )
    parser: str | None = field(
        default=None, metadata=_help("with --vote parsed: yes-no, choice or refusal (smoothguard.answers)")
    )

    def __post_init__(self) -> None:
        if self.noise_space is not None and self.noise_space not in NOISE_SPACES:
            raise ConfigError(f"unknown noise space {self.noise_space!r}; choose one of {', '.join(NOISE_SPACES)}")
        if self.sigma is not None:
            object.__setattr__(self, "sigma", validate_sigma(self.sigma, self.noise_space))
        check_int("num_copies", self.num_copies, minimum=0)
        check_seed(self.seed)
        check_int("num_clusters", self.num_clusters, minimum=1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
        if not isinstance(self.clamp, bool):
            raise ConfigError(f"clamp must be True or False, got {self.clamp!r}")
        if self.embedder is not None and (not isinstance(self.embedder, str) or not self.embedder.strip()):
            raise ConfigError(f"embedder must be a non-empty spec string or None, got {self.embedder!r}")
        if self.purifier is not None and (not isinstance(self.purifier, str) or not self.purifier.strip()):
            raise ConfigError(f"purifier must be a non-empty spec string or None, got {self.purifier!r}")
        if self.purifier is not None:
            check_purifier_space(self.noise_space)
        if not isinstance(self.purify_clean, bool):
            raise ConfigError(f"purify_clean must be True or False, got {self.purify_clean!r}")
        if self.vote not in VOTES:
            raise ConfigError(f"unknown vote {self.vote!r}; choose one of {', '.join(VOTES)}")
        if self.parser is not None:
            check_parser_name(self.parser)
        if (self.vote == "parsed") != (self.parser is not None):
            raise ConfigError(
                "a parsed vote needs a parser (--vote parsed --parser yes-no|choice|refusal), and a parser "
                "is used only by the parsed vote"
            )
        if self.adaptive is True:
            object.__setattr__(self, "adaptive", AdaptiveSampling())
        elif self.adaptive is False:
            object.__setattr__(self, "adaptive", None)
        elif self.adaptive is not None and not isinstance(self.adaptive, AdaptiveSampling):
            raise ConfigError(f"adaptive must be True, False or an AdaptiveSampling, got {self.adaptive!r}")

    @classmethod
    def of(cls, **settings: Any) -> GuardConfig:
        """``GuardConfig(**settings)``, with a ConfigError (not a TypeError) for an unknown setting."""
        unknown = sorted(set(settings) - set(cls.names()))
        if unknown:
            raise ConfigError(f"unknown guard setting(s) {', '.join(unknown)}; known: {', '.join(cls.names())}")
        return cls(**settings)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> GuardConfig:
        """A copy with ``changes`` (validated like a new config)."""
        return GuardConfig.of(**{**{name: getattr(self, name) for name in self.names()}, **changes})

    def resolve(self, noise_space: str) -> GuardConfig:
        """This config in ``noise_space`` (its own when it names one; pixel when it has a purifier), with the
        space's default sigma when it sets none."""
        space = self.noise_space or ("pixel" if self.purifier is not None else noise_space)
        return self.replace(noise_space=space, sigma=DEFAULT_SIGMA[space] if self.sigma is None else self.sigma)

    @property
    def defended(self) -> bool:
        """Whether any noisy copy is answered (``num_copies > 0``)."""
        return self.num_copies > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings; ``adaptive`` appears only when it is on."""
        data = {name: getattr(self, name) for name in self.names() if name != "adaptive"}
        return data if self.adaptive is None else {**data, "adaptive": self.adaptive.to_dict()}
