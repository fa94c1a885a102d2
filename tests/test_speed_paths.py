"""The whole cost, without wasted work (issue 11): each distinct answer embedded once, threads, and the
GPU-ready loading paths (device_map, attention implementation, the embedder on the model's device) run
on the CPU here."""

import numpy as np
import pytest
import torch

from smoothguard import ConfigError, SmoothGuard, load_model
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.cluster import aggregate
from smoothguard.models.auto import set_threads

PROMPT = "What is in the image?"


class CountingEmbedder:
    """The real MiniLM, counting the texts it is asked to embed."""

    def __init__(self, embedder) -> None:
        self.inner, self.name, self.texts = embedder, embedder.name, []

    def embed(self, texts):
        self.texts += list(texts)
        return self.inner.embed(texts)


@pytest.mark.parametrize(("sigma", "adaptive"), [(0.0, False), (1.0, False), (0.0, True), (0.5, True)])
def test_each_distinct_answer_is_embedded_once_and_the_vote_is_unchanged(
    tiny_llava, minilm, image_file, sigma, adaptive
):
    counting = CountingEmbedder(minilm)
    guard = SmoothGuard(tiny_llava, sigma=sigma, num_copies=10, embedder=counting, adaptive=adaptive)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert len(counting.texts) == len(set(counting.texts)) == result.num_distinct
    # The same vote as clustering every candidate's own embedding, duplicates included.
    reference = aggregate(result.candidates, minilm.embed(result.candidates), num_clusters=2, seed=0, prefer_index=0)
    assert (result.cluster_labels, result.chosen_index) == (reference.labels, reference.chosen_index)
    assert result.majority_fraction == reference.majority_fraction


def test_threads_reach_torch_and_bad_values_are_one_line(capsys, tiny_llava_dir, image_file):
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", "hi"]
        assert main([*argv, "--no-defense", "--max-new-tokens", "1", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        capsys.readouterr()
        assert main([*argv, "--threads", "0"]) == EXIT_USER_ERROR
        assert "--threads must be >= 1" in capsys.readouterr().err
        with pytest.raises(ConfigError, match="threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}, "auto"])
def test_a_device_map_loads_through_from_pretrained(tiny_llava_dir, image_file, device_map):
    model = load_model(tiny_llava_dir, device_map=device_map)
    assert model.device == torch.device("cpu") and model.model.get_input_embeddings().weight.device.type == "cpu"
    assert not any(p.requires_grad for p in model.model.parameters())
    answer = SmoothGuard(model, num_copies=0).generate(PROMPT, image=image_file, max_new_tokens=3).text
    reference = SmoothGuard(load_model(tiny_llava_dir), num_copies=0).generate(
        PROMPT, image=image_file, max_new_tokens=3
    )
    assert answer == reference.text


def test_attention_implementation_and_the_conflicts(tiny_llava_dir):
    assert load_model(tiny_llava_dir, attn_implementation="eager").model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="device or a device_map"):
        load_model(tiny_llava_dir, device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="runs on its server"):
        load_model("openai:http://127.0.0.1:9/v1#m", device_map="auto")


def test_the_embedder_runs_where_the_model_runs(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, num_copies=1)
    assert guard.embedder.device == str(tiny_llava.device) == "cpu"
    assert np.isfinite(guard.embedder.embed(["a"])).all()


def test_media_go_to_the_models_device(tiny_llava, image_file):
    query = SmoothGuard(tiny_llava, num_copies=1).prepare([PROMPT], [image_file])[0]
    assert query.medium.device == tiny_llava.device
    assert all(t.device == tiny_llava.device for t in query.clean.values())


def test_compile_decode_opts_in_to_a_static_cache_and_a_compiled_forward(tiny_llava_dir):
    model = load_model(tiny_llava_dir, compile_decode=True)  # compiled lazily: nothing is generated here
    assert model.model.generation_config.cache_implementation == "static"
    assert hasattr(model.model.forward, "_torchdynamo_orig_callable")  # torch.compile's wrapper
    assert not hasattr(load_model(tiny_llava_dir).model.forward, "_torchdynamo_orig_callable")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (a CUDA GPU) to compare with")
def test_the_noise_is_the_same_on_every_device(tiny_llava_dir, image_file):
    guards = [SmoothGuard(load_model(tiny_llava_dir, device=device), sigma=0.5) for device in ("cpu", "cuda")]
    noisy = []
    for guard in guards:
        query = guard.prepare([PROMPT], [image_file])[0]
        noisy.append(guard.candidates(query, range(3), clean=False)[0].media["pixel_values"].cpu())
    assert torch.allclose(noisy[0], noisy[1], atol=1e-5)
