"""Certified answers (randomized smoothing, Cohen et al. 2019) and adaptive sampling for discrete answers.

The base classifier is ``f(x) = parse(generate(x))``: the model's greedy answer to the prompt about input
``x``, mapped by an answer parser to a label (``yes``/``no``, a choice letter, ``refuse``/``comply``: the
parsers of ``smoothguard.answers``, or any ``str -> str`` callable).
The smoothed classifier ``g(x)`` returns the label ``f`` most likely gives under noise ``x + N(0, sigma^2 I)``.
If ``p_A``, a lower confidence bound on that label's probability, exceeds 1/2, then ``g`` gives the same
label for every input within L2 distance ``sigma * Phi^-1(p_A)`` of ``x`` (with probability >= 1 - alpha
over the sampling). :class:`Smoothed` is ``g``: its ``certify`` is Cohen et al.'s CERTIFY, its ``predict``
their PREDICT.

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

Samples: the copies are answered by the guard's own sampler (``SmoothGuard.sample``), so noisy copy ``i``
is the same noise as the guard's copy ``i`` (seed rule of ``smoothguard.noise``), whatever the batch size;
``batch_size`` copies per ``generate`` call (``DEFAULT_BATCH_SIZE`` when the guard sets none). Selection
(``n0``) and estimation (``n``) use disjoint copies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from smoothguard.errors import ConfigError, check_int
from smoothguard.stats import binomial_test, clopper_pearson_lower, normal_quantile, validate_alpha

if TYPE_CHECKING:
    from smoothguard.guard import SmoothGuard

#: Text answer -> label, e.g. ``smoothguard.certify.YesNoParser()``.
AnswerParser = Callable[[str], str]

#: Most noisy copies per ``generate`` call when the guard sets no ``batch_size``.
DEFAULT_BATCH_SIZE = 128

#: What a radius measures, per noise space.
RADIUS_UNITS = {
    "pixel": "L2 over [0, 1] pixels",
    "normalized": "L2 over normalized pixel_values",
    "waveform": "L2 over waveform samples",
}


def certified_radius(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)``, in sigma's units; 0 when ``p_lower <= 1/2`` (no certificate)."""
    if not 0.0 <= p_lower <= 1.0:
        raise ConfigError(f"p_lower must be a probability in [0, 1], got {p_lower!r}")
    return sigma * normal_quantile(p_lower) if p_lower > 0.5 else 0.0


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
    p_value = binomial_test(n_top, n_top + n_second, 0.5)
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
def noisy_answers(
    guard: SmoothGuard,
    prompt: str,
    media: Any,
    copies: range,
    *,
    query_id: str | None = None,
    max_new_tokens: int = 16,
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to noisy copies ``copies`` of ``media`` (image: path, PIL, array or [3, H, W] tensor in
    [0, 1]; audio: path, array or (array, rate)) through ``guard.sample``, ``guard.config.batch_size``
    (default ``DEFAULT_BATCH_SIZE``) copies per ``generate`` call. ``query_id``: the query's name for its
    noise (default: a digest of its content), as in ``SmoothGuard.generate``."""
    sampler = guard if guard.config.batch_size else guard.replace(batch_size=DEFAULT_BATCH_SIZE)
    query = sampler.prepare([prompt], [media], None if query_id is None else [query_id])
    return sampler.sample(query, copies, max_new_tokens=max_new_tokens, **generate_kwargs)[0]


class Smoothed:
    """The smoothed classifier ``g`` over ``guard``'s sampling (Cohen et al.'s ``Smooth``): its base classifier
    is ``parser(answer)`` (a ``str -> str`` callable, or a ``smoothguard.answers`` parser name) of the model's
    answer to a noisy copy. ``predict`` and ``certify`` are their PREDICT and CERTIFY; the radius is in the
    guard's noise-space units (:data:`RADIUS_UNITS`)."""

    def __init__(self, guard: SmoothGuard, parser: AnswerParser | str) -> None:
        from smoothguard.answers import load_parser

        self.guard = guard
        self.parser = load_parser(parser) if isinstance(parser, str) else parser

    def predict(
        self,
        prompt: str,
        media: Any,
        *,
        n: int = 100,
        alpha: float = 0.001,
        query_id: str | None = None,
        max_new_tokens: int = 16,
        **generate_kwargs: Any,
    ) -> Prediction:
        """PREDICT over ``n`` noisy copies (see :func:`predict_from_counts`)."""
        check_int("n", n, minimum=1)
        validate_alpha(alpha)
        answers = noisy_answers(
            self.guard, prompt, media, range(n), query_id=query_id, max_new_tokens=max_new_tokens, **generate_kwargs
        )
        return predict_from_counts(Counter(self.parser(a) for a in answers), alpha)

    def certify(
        self,
        prompt: str,
        media: Any,
        *,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        query_id: str | None = None,
        max_new_tokens: int = 16,
        **generate_kwargs: Any,
    ) -> Certificate:
        """CERTIFY: select on copies ``0 .. n0 - 1``, estimate on copies ``n0 .. n0 + n - 1`` (see
        :func:`certify_from_counts`)."""
        check_int("n0", n0, minimum=1)
        check_int("n", n, minimum=1)
        validate_alpha(alpha)
        answers = noisy_answers(
            self.guard,
            prompt,
            media,
            range(n0 + n),
            query_id=query_id,
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        labels = [self.parser(a) for a in answers]
        noise = self.guard.noise
        return certify_from_counts(Counter(labels[:n0]), Counter(labels[n0:]), alpha, noise.sigma, noise.space)


# -------------------------------------------------------------------------------------------- internals
def _ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Labels by decreasing count, ties in first-seen order; ConfigError when there is no count."""
    ranked = Counter({label: int(c) for label, c in counts.items() if c}).most_common()
    if not ranked:
        raise ConfigError("no answers to count: pass at least one labelled sample")
    return ranked
