"""The purifier stage (denoised smoothing) and the vote on parsed answers, on a tiny random LLaVA."""

import json

import pytest
import torch

from smoothguard import ConfigError, GuardConfig, SmoothGuard
from smoothguard.answers import RefusalParser, YesNoParser
from smoothguard.attacks import EOT
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.cluster import vote
from smoothguard.errors import ModelLoadError
from smoothguard.purify import CallablePurifier, check_purifier_spec, load_purifier, purifier_names

PROMPT = "What is in the image?"


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


def test_callable_purifiers_are_wrapped_with_or_without_sigma():
    images = torch.rand(2, 3, 5, 7)
    wrapped = load_purifier(grey)
    assert isinstance(wrapped, CallablePurifier) and wrapped.name == "grey"
    assert torch.equal(wrapped(images, 0.3), torch.full_like(images, 0.5))
    recorder = Recorder()
    assert load_purifier(recorder) is recorder  # a purifier with name and sigma is used as it is
    assert load_purifier(lambda images, sigma: images * sigma)(images, 0.5).allclose(images / 2)
    with pytest.raises(ConfigError, match="callable"):
        CallablePurifier(3)


def test_unknown_purifier_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown purifier .nope.*testbed-denoiser"):
        check_purifier_spec("nope")
    with pytest.raises(ConfigError, match="diffusion: needs"):
        check_purifier_spec("diffusion:")
    with pytest.raises(ConfigError, match=r"holds no purifier\.json"):
        load_purifier(str(tmp_path))
    (tmp_path / "purifier.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"not a valid purifier\.json"):
        load_purifier(str(tmp_path))
    (tmp_path / "purifier.json").write_text(json.dumps({"purifier": "no-such-plugin"}))
    with pytest.raises(ConfigError, match="'no-such-plugin', which is not installed"):
        load_purifier(str(tmp_path))
    assert "testbed-denoiser" in purifier_names()


def test_purifier_needs_pixel_space():
    with pytest.raises(ConfigError, match="use noise space pixel, not normalized"):
        GuardConfig(purifier="testbed-denoiser", noise_space="normalized")
    with pytest.raises(ConfigError, match="not waveform"):
        GuardConfig(purifier="testbed-denoiser", noise_space="waveform")
    resolved = GuardConfig(purifier="testbed-denoiser").resolve("normalized")
    assert resolved.noise_space == "pixel" and resolved.sigma == 0.027  # the purifier's space and its default


def test_every_noisy_copy_and_the_clean_one_pass_through_the_purifier(tiny_llava, minilm, image_file):
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.2, num_copies=3)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=3)
    assert guard.config.noise_space == "pixel" and guard.config.purifier == "recorder"
    assert result.config["purifier"] == "recorder" and result.config["purifier_identity"] == {"name": "recorder"}
    shapes = [tuple(images.shape) for images, _ in recorder.calls]
    assert shapes[0][0] == 1 and sum(shape[0] for shape in shapes[1:]) == 3  # the clean one, then 3 copies
    assert all(sigma == 0.2 for _, sigma in recorder.calls)
    clean = recorder.calls[0][0][0]
    noisy = torch.cat([images for images, _ in recorder.calls[1:]])
    assert not torch.equal(noisy[0], clean) and noisy.min() >= 0 and noisy.max() <= 1  # clamped noisy copies
    assert guard.describe()["purifier_identity"] == {"name": "recorder"}


def test_purify_clean_false_leaves_the_clean_candidate_alone(tiny_llava, minilm, image_file):
    """Mutation: the clean candidate purified although purify_clean=False."""
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, purify_clean=False, sigma=0.2, num_copies=2)
    guard.generate(PROMPT, image=image_file, max_new_tokens=2)
    assert sum(images.shape[0] for images, _ in recorder.calls) == 2
    plain = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.2, noise_space="pixel", num_copies=0)
    unpurified = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, purify_clean=False, num_copies=0)
    first = plain.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert unpurified.generate(PROMPT, image=image_file, max_new_tokens=4).text == first.text


def test_a_purifier_that_erases_the_image_makes_every_candidate_the_same(tiny_llava, minilm, image_file, tmp_path):
    other = tmp_path / "other.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (250, 10, 10)).save(other)
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=grey, sigma=0.5, num_copies=4)
    first = guard.generate(PROMPT, image=image_file, max_new_tokens=5)
    second = guard.generate(PROMPT, image=other, max_new_tokens=5)
    assert len(set(first.candidates)) == 1 and first.candidates == second.candidates


def test_replace_keeps_the_purifier_unless_it_changes(tiny_llava, minilm):
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.1)
    assert guard.replace(sigma=0.2).purifier is recorder
    assert guard.replace(purifier=None).purifier is None
    assert SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1).purifier is None


def test_eot_gradient_runs_through_noise_and_purifier(tiny_llava, minilm):
    """The adaptive attack sees the purifier: an erasing purifier leaves no gradient on the pixels, a
    half-keeping one halves it, and every step draws fresh noise through it."""
    pixels = 0.3 + 0.4 * torch.rand(3, 30, 30)  # sigma 0.01: no copy reaches the [0, 1] clamps

    def gradient(purifier) -> torch.Tensor:
        guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=purifier, sigma=0.01)
        eot = EOT.from_guard(guard, samples=3)
        assert eot.purifier is guard.purifier
        x = pixels.clone().requires_grad_()
        inputs = eot.media(tiny_llava, x, seed=0, step=0)
        sum(batch["pixel_values"].sum() for batch in inputs).backward()
        return x.grad

    keep_all = gradient(lambda images, sigma: images)
    assert keep_all.abs().sum() > 0
    assert torch.allclose(gradient(Recorder(keep=0.5)), keep_all / 2, atol=1e-6)
    assert gradient(grey).abs().sum() == 0
    recorder = Recorder()
    eot = EOT.from_guard(SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.1), samples=2)
    eot.media(tiny_llava, pixels, seed=0, step=0)
    eot.media(tiny_llava, pixels, seed=0, step=1)
    # Per step: the noisy copies, then the clean candidate, each through the purifier.
    (step0, _), (clean0, _), (step1, _), (clean1, _) = recorder.calls
    assert step0.shape[0] == 2 and not torch.equal(step0, step1)
    assert torch.equal(clean0, pixels.unsqueeze(0)) and torch.equal(clean1, clean0)  # no noise on the clean one
    assert eot.describe()["purifier"] == {"name": "recorder"} and eot.describe()["purify_clean"] is True
    with pytest.raises(ConfigError, match="use noise space pixel, not normalized"):
        EOT(SmoothGuard(tiny_llava, embedder=minilm).noise, 2, recorder)


def test_eot_sees_the_clean_candidate_as_the_guard_votes_over_it(tiny_llava, minilm):
    """EOT.from_guard adds the clean input after the noisy copies: through the purifier, told the guard's
    sigma, exactly as ``guard.purified_clean`` makes it (and preprocessed as the guard does); unpurified
    when the guard does not purify its clean candidate; absent with ``clean=False``."""
    pixels = 0.3 + 0.4 * torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.2, num_copies=2)
    media = EOT.from_guard(guard, samples=2).media(tiny_llava, pixels, seed=0, step=0)
    assert len(media) == 3 and recorder.calls[-1][1] == 0.2
    expected = tiny_llava.preprocess(guard.purified_clean(pixels))
    assert torch.equal(media[2]["pixel_values"], expected["pixel_values"])
    unpurified = guard.replace(purify_clean=False)
    media = EOT.from_guard(unpurified, samples=2).media(tiny_llava, pixels, seed=0, step=0)
    assert torch.equal(media[2]["pixel_values"], tiny_llava.preprocess(pixels.unsqueeze(0))["pixel_values"])
    assert EOT.from_guard(unpurified, samples=2).describe()["purify_clean"] is False
    alone = EOT(guard.noise, 2, recorder, clean=False)
    assert len(alone.media(tiny_llava, pixels, seed=0, step=0)) == alone.candidates == 2
    assert EOT.from_guard(guard, samples=2).candidates == 3


def test_vote_counts_majority_and_ties():
    outcome = vote(["Yes.", "No", "no!", "Yes", "Nope"], ["yes", "no", "no", "yes", "no"], prefer_index=0)
    assert outcome.votes == {"no": 3, "yes": 2} and outcome.cluster_sizes == [3, 2]
    assert outcome.labels == [1, 0, 0, 1, 0] and outcome.chosen_index == 1 and outcome.majority_fraction == 0.6
    # A 2-2 tie goes to the preferred (clean) candidate's label, whichever comes first.
    tie = vote(["a", "b", "c", "d"], ["no", "yes", "no", "yes"], prefer_index=1)
    assert tie.votes == {"yes": 2, "no": 2} and tie.chosen_index == 1 and tie.labels == [1, 0, 1, 0]
    # Without a preference the label seen first wins, and the majority's first member is chosen.
    assert vote(["a", "b", "c", "d"], ["no", "yes", "no", "yes"]).chosen_index == 0
    assert vote(["x", "y", "z"], ["refuse", "comply", "comply"], prefer_index=0).chosen_index == 1
    with pytest.raises(ConfigError, match="one parsed label per candidate"):
        vote(["a"], ["x", "y"])


def test_guard_votes_on_parsed_answers(tiny_llava, image_file, monkeypatch):
    """With vote="parsed" no embedder is loaded; the answer is the parsed majority's (clean first)."""
    answers = iter([["No.", "Yes it is", "Yes", "No", "yes"]])

    def complete(inputs, **kwargs):
        from smoothguard.models.base import Generation

        return [Generation(text, 3, 2, "stop") for text in next(answers)]

    monkeypatch.setattr(tiny_llava, "complete", complete)
    guard = SmoothGuard(tiny_llava, vote="parsed", parser="yes-no", sigma=0.3, num_copies=4, embedder="no-such")
    result = guard.generate(PROMPT, image=image_file)
    assert result.votes == {"yes": 3, "no": 2} and result.text == "Yes it is" and result.chosen_index == 1
    assert result.config["embedder"] is None and result.config["vote"] == "parsed"
    with pytest.raises(ConfigError, match="needs a parser"):
        GuardConfig(vote="parsed")
    with pytest.raises(ConfigError, match="unknown answer parser"):
        GuardConfig(vote="parsed", parser="maybe")


def test_parsers_of_answers():
    assert [YesNoParser()(a) for a in ("Yes.", "No, it is not", "There is not one")] == ["yes", "no", "no"]
    assert RefusalParser()("I\u2019m sorry, I can\u2019t") == "refuse" and RefusalParser()("SECRET") == "comply"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--purifier", "nope"], "unknown purifier 'nope'"),
        (["--purifier", "testbed-denoiser", "--noise-space", "normalized"], "use noise space pixel"),
        (["--vote", "parsed"], "needs a parser"),
    ],
)
def test_cli_purifier_and_vote_errors_are_one_line(capsys, extra, message, image_file):
    code = main(["generate", "--model", "/no/such/model", "--image", str(image_file), "--prompt", "Hi", *extra])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and message in err and len(err.splitlines()) == 1


def test_cli_generate_with_a_purifier_folder_and_parsed_vote(capsys, tiny_llava_dir, image_file):
    pytest.importorskip("smoothguard.testbed.denoiser", reason="the testbed denoiser is not built yet")
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", "Is it red?"]
    code = main(
        [
            *argv,
            "--purifier",
            "testbed-denoiser",
            "--sigma",
            "0.1",
            "--num-copies",
            "2",
            "--json",
            "--vote",
            "parsed",
            "--parser",
            "yes-no",
            "--max-new-tokens",
            "3",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["config"]["purifier"] == "testbed-denoiser" and sum(result["votes"].values()) == 3
    assert result["config"]["purifier_identity"]["name"] == "testbed-denoiser"


def test_server_reports_the_purifier_and_the_parsed_votes(tiny_llava):
    """``serve`` with a purifier and a parsed vote: /health and every answer's evidence name them."""
    import httpx

    from server_support import post, question
    from smoothguard.server import BackgroundServer, ServerSettings, create_app

    guard = SmoothGuard(tiny_llava, purifier=Recorder(), sigma=0.1, num_copies=2, vote="parsed", parser="yes-no")
    with BackgroundServer(create_app(guard, ServerSettings(model_name="tiny", fixed_seed=True))) as running:
        health = httpx.get(f"{running.url}/health", timeout=30).json()
        answer = post(running.url, {"model": "tiny", "messages": question("Is it red?", seed=1), "max_tokens": 3})
    assert health["purifier"] == "recorder" and health["noise_space"] == "pixel" and health["vote"] == "parsed"
    evidence = answer.json()["smoothguard"]
    assert evidence["purifier"] == "recorder" and evidence["vote"] == "parsed"
    assert sum(evidence["votes"].values()) == 3 and set(evidence["votes"]) <= {"yes", "no"}


def test_eval_runs_with_a_purifier_and_records_it(capsys, tmp_path):
    argv = ["eval", "testbed-pope", "--model", "testbed", "--purifier", "testbed-denoiser", "--sigma", "0.25"]
    argv += ["--num-copies", "2", "--option", "num_scenes=1", "--limit", "2", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    defense = summary["settings"]["guard"]["defense"]
    assert (defense["purifier"], defense["noise_space"], defense["sigma"]) == ("testbed-denoiser", "pixel", 0.25)
    assert summary["items"]["done"] == 2
    assert "purifier testbed-denoiser" in (tmp_path / "report.md").read_text()


def test_a_remote_model_gets_the_purified_copies(image_file):
    """The guard proxy's path: pixel copies are purified before they are encoded and sent upstream. The
    scripted upstream answers with a hash of the image it got: an erasing purifier makes every image the
    same (mutation: purifier skipped for remote models -> four different images)."""
    from server_support import ScriptedUpstream
    from smoothguard import load_model
    from smoothguard.server import BackgroundServer

    upstream = ScriptedUpstream()
    with BackgroundServer(upstream.app) as server:
        model = load_model(f"openai:{server.url}/v1#scripted")
        plain = SmoothGuard(model, sigma=0.2, num_copies=3, vote="parsed", parser="refusal")
        erased = SmoothGuard(model, plain.config.replace(purifier=None), purifier=grey)
        noisy = plain.generate("q", image=image_file, max_new_tokens=4).candidates
        purified = erased.generate("q", image=image_file, max_new_tokens=4).candidates
    assert len(set(noisy)) == 4 and len(set(purified)) == 1
