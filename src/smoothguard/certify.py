"""Certified answers (randomized smoothing, Cohen et al. 2019) and adaptive sampling for discrete answers.

The base classifier is ``f(x) = parse(generate(x))``: the model's greedy answer to the prompt about input
``x``, mapped by an answer parser to a label (``yes``/``no``, a choice letter, ``refuse``/``comply``: the
parsers of ``smoothguard.answers``, or any ``str -> str`` callable).
The smoothed classifier ``g(x)`` returns the label ``f`` most likely gives under noise ``x + N(0, sigma^2 I)``.
If ``p_A``, a lower confidence bound on that label's probability, exceeds 1/2, then ``g`` gives the same
label for every input within L2 distance ``sigma * Phi^-1(p_A)`` of ``x`` (with probability >= 1 - alpha
over the sampling). :func:`certify` is Cohen et al.'s CERTIFY, :func:`predict` their PREDICT.

Units of the radius: those of the noise space (``smoothguard.noise``), i.e. of the tensor the noise is
added to.

- ``pixel``: L2 over the input's [0, 1] pixels (all channels, at the input's own resolution). Clamping
  the noisy copy to [0, 1] is part of ``f``, so the certificate stands.
- ``normalized``: L2 over the processor's ``pixel_values`` (resized, cropped, ``(x - mean[c]) / std[c]``).
  A pixel change ``d`` at the model's input resolution moves ``pixel_values`` by ``d[c] / std[c]`` per
  channel, so its normalized L2 norm is at most ``||d||_2 / min(std)``: a normalized radius ``r``
  certifies every pixel change with ``||d||_2 <= r * min(std)`` ([0, 1] pixel L2). That is exact for an
  image already at the model's resolution; when the processor resizes, divide further by the resize's
  operator norm (its largest singular value).
- ``waveform``: L2 over the [-1, 1] samples of the waveform.

Samples: noisy copy ``i`` of an input is drawn with its own seed (from the guard's seed and ``i``), so the
answers do not depend on the batch size; copies go through the guard's noise and the adapter's one-call
``generate``, ``batch_size`` at a time. Selection (``n0``) and estimation (``n``) use disjoint copies.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from smoothguard.errors import ConfigError, UnsupportedError
from smoothguard.inputs import load_audio, load_image, validate_prompt
from smoothguard.models.base import Query

if TYPE_CHECKING:
    from smoothguard.guard import SmoothGuard
    from smoothguard.models.base import MLLMAdapter

#: Text answer -> label, e.g. ``smoothguard.answers.YesNoParser()``.
AnswerParser = Callable[[str], str]

#: Most noisy copies per ``generate`` call when the guard sets no ``batch_size``.
DEFAULT_BATCH_SIZE = 128


# ------------------------------------------------------------------------------------------- statistics
def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper–Pearson lower bound on a binomial proportion after ``k`` successes in
    ``n`` trials: the ``alpha`` quantile of Beta(k, n - k + 1); 0 when k = 0."""
    _check_count("n", n, 1)
    _check_count("k", k, 0)
    if k > n:
        raise ConfigError(f"k must be <= n, got k={k}, n={n}")
    validate_alpha(alpha)
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def validate_alpha(alpha: object) -> None:
    """ConfigError unless ``alpha`` is a number in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a number in (0, 1), e.g. 0.001; got {alpha!r}")


def certified_radius(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)``, in sigma's units; 0 when ``p_lower <= 1/2`` (no certificate)."""
    if not 0.0 <= p_lower <= 1.0:
        raise ConfigError(f"p_lower must be a probability in [0, 1], got {p_lower!r}")
    return sigma * float(norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


@dataclass(frozen=True)
class Prediction:
    """PREDICT's outcome: ``answer`` (``None`` = abstained), the two-sided binomial test's ``p_value``
    between the top two labels, and the label ``counts`` over ``n`` noisy copies."""

    answer: str | None
    p_value: float
    counts: dict[str, int]
    alpha: float
    n: int

    @property
    def abstained(self) -> bool:
        return self.answer is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "abstained": self.abstained}


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's outcome: ``answer`` (``None`` = abstained) certified within L2 ``radius`` (noise-space
    units, see the module docstring; 0 when abstained). ``top``: the label selected on the ``n0``
    selection copies; ``p_lower``: the lower confidence bound on its probability from the ``n`` estimation
    copies, whose labels are ``counts``."""

    answer: str | None
    radius: float
    top: str
    p_lower: float
    counts: dict[str, int]
    selection_counts: dict[str, int]
    sigma: float
    noise_space: str
    alpha: float
    n0: int
    n: int

    @property
    def abstained(self) -> bool:
        return self.answer is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "abstained": self.abstained}


def predict_from_counts(counts: Mapping[str, int], alpha: float) -> Prediction:
    """PREDICT on label counts: the top label unless a two-sided binomial test of its count against the
    runner-up's (p = 1/2) is not significant at ``alpha``."""
    validate_alpha(alpha)
    ranked = _ranked(counts)
    top, n_top = ranked[0]
    n_second = ranked[1][1] if len(ranked) > 1 else 0
    p_value = float(binomtest(n_top, n_top + n_second, 0.5).pvalue)
    return Prediction(top if p_value <= alpha else None, p_value, dict(ranked), alpha, sum(counts.values()))


def certify_from_counts(
    selection: Mapping[str, int], estimation: Mapping[str, int], alpha: float, sigma: float, noise_space: str
) -> Certificate:
    """CERTIFY on label counts: the top label of ``selection``, its lower bound ``p_A`` from ``estimation``;
    abstain when ``p_A <= 1/2``, else certify radius ``sigma * Phi^-1(p_A)``."""
    top = _ranked(selection)[0][0]
    n = sum(estimation.values())
    p_lower = clopper_pearson_lower(estimation.get(top, 0), n, alpha)
    radius = certified_radius(p_lower, sigma)
    return Certificate(
        answer=top if p_lower > 0.5 else None,
        radius=radius,
        top=top,
        p_lower=p_lower,
        counts=dict(_ranked(estimation)),
        selection_counts=dict(_ranked(selection)),
        sigma=sigma,
        noise_space=noise_space,
        alpha=alpha,
        n0=sum(selection.values()),
        n=n,
    )


# ---------------------------------------------------------------------------------------------- sampling
def sample_answers(
    guard: SmoothGuard,
    prompt: str,
    media: Any,
    count: int,
    *,
    max_new_tokens: int = 16,
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to noisy copies ``0 .. count - 1`` of ``media`` (image: path, PIL, array or
    [3, H, W] tensor in [0, 1]; audio: path, array or (array, rate)) with the guard's noise, sigma, clamping
    and seed; ``guard.batch_size`` (default ``DEFAULT_BATCH_SIZE``) copies per ``generate`` call."""
    _check_count("count", count, 1)
    model = guard.model
    medium = _load_medium(model, media)
    text = model.prompt_text(validate_prompt(prompt), medium)
    step = guard.batch_size or DEFAULT_BATCH_SIZE
    answers: list[str] = []
    for first in range(0, count, step):
        indices = range(first, min(first + step, count))
        with torch.no_grad():
            queries = [Query(text, guard.noise.copies(model, medium, 1, copy_seed(guard.seed, i))[0]) for i in indices]
        answers += model.generate(queries, max_new_tokens=max_new_tokens, **generate_kwargs)
    return answers


def copy_seed(seed: int, index: int) -> int:
    """The noise seed of copy ``index`` under base ``seed`` (independent streams, in [0, 2**32))."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def predict(
    guard: SmoothGuard,
    prompt: str,
    media: Any,
    parser: AnswerParser,
    *,
    n: int = 100,
    alpha: float = 0.001,
    max_new_tokens: int = 16,
    **generate_kwargs: Any,
) -> Prediction:
    """Cohen et al.'s PREDICT for ``parser(answer)`` over ``n`` noisy copies (see :func:`predict_from_counts`)."""
    validate_alpha(alpha)
    answers = sample_answers(guard, prompt, media, n, max_new_tokens=max_new_tokens, **generate_kwargs)
    return predict_from_counts(Counter(parser(a) for a in answers), alpha)


def certify(
    guard: SmoothGuard,
    prompt: str,
    media: Any,
    parser: AnswerParser,
    *,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    max_new_tokens: int = 16,
    **generate_kwargs: Any,
) -> Certificate:
    """Cohen et al.'s CERTIFY for ``parser(answer)``: select on copies ``0 .. n0 - 1``, estimate on copies
    ``n0 .. n0 + n - 1`` (see :func:`certify_from_counts`). The radius is in the guard's noise-space units."""
    _check_count("n0", n0, 1)
    _check_count("n", n, 1)
    validate_alpha(alpha)
    answers = sample_answers(guard, prompt, media, n0 + n, max_new_tokens=max_new_tokens, **generate_kwargs)
    labels = [parser(a) for a in answers]
    return certify_from_counts(Counter(labels[:n0]), Counter(labels[n0:]), alpha, guard.noise.sigma, guard.noise.space)


# ------------------------------------------------------------------------------------- adaptive sampling
@dataclass(frozen=True)
class AdaptiveSampling:
    """Stopping rule for ``SmoothGuard(adaptive=...)``: answer the clean input and the noisy copies in
    rounds (:meth:`schedule`: a first round up to the first look that could stop, then ``round_size`` copies
    a round) and stop once the majority cluster's share of the noisy copies answered so far
    is decided: its one-sided Clopper–Pearson lower bound exceeds 1/2 at the per-look level (below), or
    all ``num_copies`` copies are answered.

    Per-look level: ``alpha`` split (Bonferroni) over the looks at which a stop is possible (a look after
    ``m`` copies can stop only if ``0.5**m`` is below the level), so the chance of stopping on a share that
    is not above 1/2 is at most ``alpha`` for a fixed cluster. The clusters are themselves fitted to the
    answers, so this is a stopping rule, not a certificate (:func:`certify` gives those).
    """

    alpha: float = 0.05
    round_size: int = 2

    def __post_init__(self) -> None:
        validate_alpha(self.alpha)
        _check_count("round_size", self.round_size, 1)

    def schedule(self, num_copies: int) -> list[int]:
        """Noisy copies answered after each round: the multiples of ``round_size`` below ``num_copies`` at
        which a stop is possible, then ``num_copies`` (the first round also answers the clean input)."""
        level = self.level(num_copies)
        return [*(m for m in self._looks(num_copies) if 0.5**m < level), num_copies]

    def level(self, num_copies: int) -> float:
        """The per-look significance level for ``num_copies`` copies (see the class docstring)."""
        looks = self._looks(num_copies)
        for divisor in range(1, len(looks) + 1):
            if sum(0.5**m < self.alpha / divisor for m in looks) <= divisor:
                return self.alpha / divisor
        return self.alpha

    def decided(self, majority: int, copies: int, num_copies: int) -> bool:
        """Whether ``majority`` of ``copies`` answered noisy copies decide the vote (out of ``num_copies``)."""
        return clopper_pearson_lower(majority, copies, self.level(num_copies)) > 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _looks(self, num_copies: int) -> list[int]:
        """Candidate looks: every ``round_size`` copies, short of ``num_copies`` (where sampling ends anyway)."""
        return list(range(self.round_size, num_copies, self.round_size))


# -------------------------------------------------------------------------------------------- internals
def _ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Labels by decreasing count, ties in first-seen order; ConfigError when there is no count."""
    ranked = Counter({label: int(c) for label, c in counts.items() if c}).most_common()
    if not ranked:
        raise ConfigError("no answers to count: pass at least one labelled sample")
    return ranked


def _load_medium(model: MLLMAdapter, source: Any) -> torch.Tensor:
    if model.modality == "image":
        return load_image(source, name=None if isinstance(source, (str, os.PathLike)) else "image")
    rate = getattr(model, "sampling_rate", None)
    if rate is None:
        raise UnsupportedError(f"{model.name} does not declare an audio sampling rate")
    return load_audio(source, sampling_rate=rate, name=None if isinstance(source, (str, os.PathLike)) else "audio")


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
