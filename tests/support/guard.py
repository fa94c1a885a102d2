"""Helpers shared by several test modules (moved from tests/test_guard.py)."""

import numpy as np
import torch


class FixedVectors:
    """An embedder that maps each answer to a fixed vector (answers not listed raise)."""

    name = "fixed-vectors"

    def __init__(self, vectors):
        self.vectors = vectors

    def embed(self, texts):
        return np.array([self.vectors[text] for text in texts], dtype=np.float32)


class Recorder(torch.nn.Module):
    """A purifier that records what it is given and returns a fixed mix of its input and mid-grey."""

    name = "recorder"

    def __init__(self, keep: float = 0.5) -> None:
        super().__init__()
        self.keep = keep
        self.calls: list[tuple[torch.Tensor, float]] = []

    def forward(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls.append((images.detach().clone(), sigma))
        return self.keep * images + (1 - self.keep) * 0.5


def grey(images: torch.Tensor) -> torch.Tensor:
    """A one-argument purifier: every image becomes mid-grey (keeps the graph: 0 * images)."""
    return images * 0 + 0.5
