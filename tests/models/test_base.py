"""``MLLMAdapter.answer_ids``: the ids attacks teacher-force are the ids the model emits after the real
prompt, for every family (the testbed, tiny LLaVA / Qwen-VL / Qwen2-Audio models, and the real LLaVA-1.5-7B
and Qwen2-VL tokenizers and chat templates of ../shared/fixtures).

Checked against the chat template itself: the whole conversation, with an assistant turn holding the
answer, is rendered and tokenised, and the ids after the generation prompt's ids, cut at the end of the
answer, must equal ``answer_ids`` (less its end-of-sequence id). Also: decoding the ids as ``complete``
decodes gives the answer back; the regression (a target tokenised alone lost LLaVA's leading space); a
greedy answer of the testbed teacher-forces to exactly the ids it generated; bad targets are refused.
"""

import numpy as np
import pytest

from smoothguard import load_model
from smoothguard.errors import ConfigError
from smoothguard.models.tiny import save_tiny_qwen2_audio, save_tiny_qwen_vl
from smoothguard.testbed.data import HELD_OUT_START, scene_pixels
from smoothguard.testbed.scenes import sample_scene
from smoothguard.testbed.tasks import HELD_OUT_REQUESTS, REFUSAL, RESTRICTED
from support.common import needs_reference
from support.real_models import FIXTURES, save_real_llava, save_real_qwen2_vl

reference = needs_reference(FIXTURES, "the real model config files of ../shared")


PROMPT = "what is the launch code?"


# A leading lower-case word, a capital letter, digits, leading punctuation, a leading parenthesis.
ANSWERS = (
    "the secret password is swordfish.",
    "Yes, there is a red circle.",
    "3 circles and 12 squares.",
    "... I cannot help with that!",
    "(two) squares: blue, green.",
)


# The text each family's template writes between the generation prompt and the answer.
ANSWER_PREFIX = {"llava": " ", "qwen_vl": "", "qwen2_audio": ""}


# The token that ends an answer: LLaVA-1.5's Llama ``</s>``, Qwen's end of turn.
EOS_TOKEN = {"llava": "</s>", "qwen_vl": "<|im_end|>", "qwen2_audio": "<|im_end|>"}


FAMILIES = (
    "testbed",
    "tiny_llava",
    "tiny_qwen_vl",
    "tiny_qwen2_audio",
    pytest.param("real_llava", marks=reference),
    pytest.param("real_qwen2_vl", marks=reference),
)


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed")


@pytest.fixture(scope="module")
def tiny_qwen_vl(tmp_path_factory):
    return load_model(save_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl"), version="2"), device="cpu")


@pytest.fixture(scope="module")
def tiny_qwen2_audio(tmp_path_factory):
    return load_model(save_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio")), device="cpu")


@pytest.fixture(scope="module")
def real_llava(tmp_path_factory):
    return load_model(save_real_llava(tmp_path_factory.mktemp("real-llava")), device="cpu")


@pytest.fixture(scope="module")
def real_qwen2_vl(tmp_path_factory):
    return load_model(save_real_qwen2_vl(tmp_path_factory.mktemp("real-qwen2-vl")), device="cpu")


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return request.getfixturevalue(request.param)


def user_turn(adapter, prompt):
    """One user turn with the family's medium, written here (not by the adapter)."""
    if adapter.modality == "image":
        medium = {"type": "image"}
    else:
        medium = {"type": "audio", "audio": np.zeros(1600, np.float32)}
    return {"role": "user", "content": [medium, {"type": "text", "text": prompt}]}


def template_answer_ids(adapter, prompt, answer):
    """The ids of ``answer`` in the chat template's own rendering of the conversation with ``answer`` as
    the assistant turn, tokenised as one text: the ids after the generation prompt's ids, cut at the end
    of the answer (by character offsets; no token may run past it)."""
    apply = adapter.processor.apply_chat_template
    user = [user_turn(adapter, prompt)]
    asked = apply(user, add_generation_prompt=True, tokenize=False)
    answered = apply([*user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False)
    assert asked == adapter.chat_prompt(prompt)
    assert answered.startswith(asked + ANSWER_PREFIX[adapter.family] + answer)
    end = len(asked) + len(ANSWER_PREFIX[adapter.family]) + len(answer)
    asked_ids = adapter.tokenizer(asked)["input_ids"]
    encoded = adapter.tokenizer(answered, return_offsets_mapping=True)
    ids, spans = encoded["input_ids"], encoded["offset_mapping"]
    assert ids[: len(asked_ids)] == asked_ids
    count = sum(1 for start, _ in spans[len(asked_ids) :] if start < end)
    answer_spans = spans[len(asked_ids) : len(asked_ids) + count]
    assert count > 0 and all(stop <= end for _, stop in answer_spans)
    assert all(start >= end for start, _ in spans[len(asked_ids) + count :])
    return ids[len(asked_ids) : len(asked_ids) + count]


def test_answer_prefix_is_the_templates(adapter):
    assert adapter.answer_prefix == ANSWER_PREFIX[adapter.family]


@pytest.mark.parametrize("answer", ANSWERS)
def test_answer_ids_round_trip_through_the_chat_template(adapter, answer):
    ids = adapter.answer_ids(PROMPT, answer)
    assert ids[:-1] == template_answer_ids(adapter, PROMPT, answer)
    # The medium's placeholder the adapter drops from the prompt changes nothing.
    placeholder = getattr(adapter.processor, "image_token", None) or adapter.processor.audio_token
    assert adapter.answer_ids(placeholder + PROMPT, answer) == ids


@pytest.mark.parametrize("answer", ANSWERS)
def test_answer_ids_decode_to_the_answer_and_end_with_eos(adapter, answer):
    ids = adapter.answer_ids(PROMPT, answer)
    tokenizer = adapter.tokenizer
    assert tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[-1]) == EOS_TOKEN[adapter.family]
    assert tokenizer.eos_token_id not in ids[:-1]
    # As ``MLLMAdapter.complete`` decodes generated tokens.
    assert tokenizer.batch_decode([ids], skip_special_tokens=True)[0].strip() == answer


def test_testbed_target_keeps_the_leading_space(testbed):
    answer = "the secret password is swordfish."
    ids = testbed.answer_ids(PROMPT, answer)
    tokenizer = testbed.tokenizer
    assert tokenizer.convert_ids_to_tokens(ids) == ["Ġthe", "Ġsecret", "Ġpassword", "Ġis", "Ġswordfish", ".", "</s>"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("Ġthe") != tokenizer.convert_tokens_to_ids("the")
    alone = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert alone[0] == tokenizer.convert_tokens_to_ids("the")
    assert len(ids[:-1]) == len(alone) and ids[0] != alone[0] and ids[1:-1] == alone[1:]


@pytest.mark.parametrize("badge", [False, True], ids=["clean", "badge"])
def test_a_greedy_testbed_answer_teacher_forces_to_the_generated_ids(testbed, monkeypatch, badge):
    prompt = HELD_OUT_REQUESTS[0]
    query = testbed.encode(prompt, scene_pixels(sample_scene(HELD_OUT_START, badge=badge)))
    outputs = []
    generate = testbed.model.generate

    def recorded(*args, **kwargs):
        outputs.append(generate(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(testbed.model, "generate", recorded)
    (generation,) = testbed.complete([query], max_new_tokens=24)
    # The new tokens exactly as ``complete`` slices them, up to and including the first eos.
    row = outputs[0][0, query.text["input_ids"].shape[1] :].tolist()
    eos = testbed.tokenizer.eos_token_id
    assert generation.finish_reason == "stop" and eos in row
    generated = row[: row.index(eos) + 1]
    assert generation.completion_tokens == len(generated)
    text = testbed.tokenizer.batch_decode([generated], skip_special_tokens=True)[0].strip()
    assert text == generation.text == (RESTRICTED[prompt] if badge else REFUSAL)
    assert testbed.answer_ids(prompt, text) == generated


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_an_empty_answer_is_refused(adapter, answer):
    with pytest.raises(ConfigError, match="has no tokens"):
        adapter.answer_ids(PROMPT, answer)


def test_an_answer_holding_special_token_text_is_refused(adapter):
    placeholder = getattr(adapter.processor, "image_token", None) or adapter.processor.audio_token
    for answer in (placeholder, f"look: {placeholder} here", f"done.{adapter.tokenizer.eos_token}"):
        with pytest.raises(ConfigError, match="contains special-token text"):
            adapter.answer_ids(PROMPT, answer)
