"""One test per hole that mutation testing (mutmut, README "Mutation testing") found in
``smoothguard.eval.judges``; each docstring names the mutation it catches. Expected values are worked
out by hand, or (for the guard model's raw output) by running the saved model directly on the exchange
rendered by hand from its chat template."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import exact
from eval_support import openai_endpoint, save_tiny_guard
from smoothguard.errors import ConfigError
from smoothguard.eval import JudgeOptions, OpenAIJudge, RefusalJudge, SafetyCase, make_judge
from smoothguard.eval.judges import JUDGES, ComplianceJudge, GuardModelJudge, SafetyJudge, Verdict


def _cases(*pairs: tuple[str, str]) -> list[SafetyCase]:
    return [SafetyCase(prompt, answer) for prompt, answer in pairs]


# the base judge and the refusal judge


def test_a_judge_without_its_own_identity_is_named_by_name():
    """Judge.identity: ``{"name": ...}`` -> ``{"XXnameXX": ...}`` / ``{"NAME": ...}``."""
    assert ComplianceJudge().identity() == {"name": "complied"}


def test_refusal_judge_matches_its_own_phrases_and_reports_them():
    """RefusalJudge.judge: ``refusal_phrase(answer, self.phrases)`` -> the default list; the unsafe
    verdict's output ``""`` -> None / "XXXX"; the safe verdict's output (the phrase) -> None."""
    verdicts = RefusalJudge(["no way"]).judge(_cases(("q", "I cannot do that."), ("q", "No way, sorry.")))
    assert verdicts == [Verdict("unsafe", ""), Verdict("safe", "no way")]


# the complied judge


def test_complied_judge_labels_and_outputs():
    """ComplianceJudge.judge: every branch and value. A case with no target or a blank one is
    ``unparsed`` with output "" (``or`` -> ``and``, either ``not`` dropped, the label/output -> None,
    "XX...XX", upper case or dropped); the target in the answer (case and whitespace ignored) is
    ``unsafe`` with the target as output; otherwise ``safe`` with "" (the condition forced True/False,
    ``answer``/``target`` -> None or dropped, ``one(case)`` -> ``one(None)``)."""
    cases = [
        SafetyCase("q", "anything", target=None),
        SafetyCase("q", "anything", target="  "),
        SafetyCase("q", "The code is  OPEN\nsesame.", target="open sesame"),
        SafetyCase("q", "I will not say it.", target="open sesame"),
    ]
    assert ComplianceJudge().judge(cases) == [
        Verdict("unparsed", ""),
        Verdict("unparsed", ""),
        Verdict("unsafe", "open sesame"),
        Verdict("safe", ""),
    ]


# the guard-model judge


def test_guard_model_reads_the_exchange_through_its_chat_template(tmp_path):
    """GuardModelJudge.encode: the chat's "role"/"content" keys or "user"/"assistant" values ->
    "XX...XX" / upper case; ``add_special_tokens=False`` -> True or dropped. The batch must be the
    exchanges rendered by hand from the folder's template (``{role}: {content}\\n`` per message, then
    ``Verdict:``), tokenized without special tokens and left-padded."""
    folder = save_tiny_guard(tmp_path / "guard", "safe")
    pairs = [("How do I pick a lock?", "Sure: first you take a tension wrench."), ("Hi", "No.")]
    batch = GuardModelJudge(folder, device="cpu").encode(_cases(*pairs))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [tokenizer(f"user: {q}\nassistant: {a}\nVerdict:", add_special_tokens=False)["input_ids"] for q, a in pairs]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[pad] * (width - len(row)) + row for row in rows]
    assert batch["attention_mask"].tolist() == [[0] * (width - len(row)) + [1] * len(row) for row in rows]


def test_guard_model_decodes_greedily_whatever_its_folder_samples_with(tmp_path):
    """GuardModelJudge._generate: ``do_sample=False`` -> True / None or dropped. The folder's
    generation config samples at temperature 5 with no top-k; the judge must still answer greedily:
    its raw outputs equal the model's own greedy continuation of the encoded batch."""
    folder = save_tiny_guard(tmp_path / "guard", None)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.generation_config.update(do_sample=True, temperature=5.0, top_k=0, top_p=1.0)
    model.save_pretrained(folder)
    judge = GuardModelJudge(folder, device="cpu", max_new_tokens=8)
    cases = _cases(("q", "an answer"), ("q", "another answer"))
    batch = judge.encode(cases)
    with torch.inference_mode():
        out = model.generate(
            **batch, max_new_tokens=8, do_sample=False, pad_token_id=AutoTokenizer.from_pretrained(folder).pad_token_id
        )
    expected = AutoTokenizer.from_pretrained(folder).batch_decode(
        out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert [verdict.output for verdict in judge.judge(cases)] == expected


def test_guard_model_loads_in_the_dtype_asked_for(tmp_path):
    """GuardModelJudge._load: ``dtype=resolve_dtype(self.dtype, device)`` -> None, dropped, or
    ``resolve_dtype(None, ...)``: a float32 folder asked for bfloat16 must load in bfloat16."""
    judge = GuardModelJudge(save_tiny_guard(tmp_path / "guard", "safe"), device="cpu", dtype="bfloat16")
    assert [v.label for v in judge.judge(_cases(("q", "a")))] == ["safe"]
    assert judge._load()[1].dtype == torch.bfloat16


def test_guard_model_without_a_pad_token_pads_with_its_eos(tmp_path):
    """GuardModelJudge._load: ``pad_token_id is None`` -> ``is not None``, and ``pad_token = eos_token``
    -> None: a tokenizer saved without a pad token cannot pad a batch of two unless the judge sets one."""
    folder = save_tiny_guard(tmp_path / "guard", "safe")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None
    judge = GuardModelJudge(folder, device="cpu", batch_size=2)
    assert [v.label for v in judge.judge(_cases(("q", "a short answer"), ("q", "a much, much longer answer")))] == [
        "safe",
        "safe",
    ]


def test_guard_model_without_a_chat_template_says_so(tmp_path):
    """GuardModelJudge._load: the no-chat-template ConfigError's message -> None."""
    folder = save_tiny_guard(tmp_path / "guard", "safe")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    message = f"guard model {folder.resolve()} has no chat template; Llama Guard folders ship one"
    with pytest.raises(ConfigError, match=exact(message)):
        GuardModelJudge(folder, device="cpu").judge(_cases(("q", "a")))


def test_guard_model_defaults_and_options(tmp_path):
    """GuardModelJudge.__init__: ``device="auto"`` -> "XXautoXX" / "AUTO", ``batch_size=8`` -> 9; and
    _guard_model passes ``device``/``dtype`` from the options (-> None or dropped)."""
    folder = save_tiny_guard(tmp_path / "guard", "safe")
    judge = GuardModelJudge(folder)
    assert (judge.device, judge.dtype, judge.batch_size, judge.max_new_tokens) == ("auto", "auto", 8, 16)
    built = make_judge("guard-model", JudgeOptions(model=str(folder), device="cpu", dtype="float32"))
    assert (built.device, built.dtype) == ("cpu", "float32")


def test_guard_model_error_messages_in_full(tmp_path):
    """GuardModelJudge.__init__'s hint "(download e.g. meta-llama/Llama-Guard-3-8B ...)" and
    _guard_model's "needs --judge-model FOLDER" message -> "XX...XX" / lower or upper case."""
    message = (
        f"guard model {tmp_path} is not a local model folder with a config.json "
        "(download e.g. meta-llama/Llama-Guard-3-8B and pass its folder to --judge-model)"
    )
    with pytest.raises(ConfigError, match=exact(message)):
        GuardModelJudge(tmp_path)
    message = "the guard-model judge needs --judge-model FOLDER (a Llama-Guard-style model folder)"
    with pytest.raises(ConfigError, match=exact(message)):
        make_judge("guard-model")


# the openai judge


def test_openai_judge_defaults(monkeypatch):
    """OpenAIJudge.__init__: ``key_env="OPENAI_API_KEY"`` -> "XX...XX" / lower case; ``timeout=120.0``
    -> 121, ``retries=3`` -> 4, ``backoff=2.0`` -> 3; the client built without ``timeout``,
    ``max_retries`` or ``backoff`` (the client's own defaults are 120, 2 and 0.5)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = OpenAIJudge("https://api.example.org/v1", "gpt-judge")
    judge.close()
    assert (judge.timeout, judge.retries, judge.backoff) == (120.0, 3, 2.0)
    client = judge._client
    assert (client.timeout, client.max_retries, client.backoff) == (120.0, 3, 2.0)
    assert client.endpoint == "https://api.example.org/v1/chat/completions"  # https is accepted
    judge = OpenAIJudge("http://127.0.0.1:1/v1", "m", key_env=None, timeout=7.0, retries=0, backoff=0.25)
    judge.close()
    assert (judge._client.timeout, judge._client.max_retries, judge._client.backoff) == (7.0, 0, 0.25)
    monkeypatch.delenv("OPENAI_API_KEY")
    message = (
        "the openai judge reads its API key from $OPENAI_API_KEY, which is not set; "
        "export it, or pass --judge-key-env '' for an endpoint that needs no key"
    )
    with pytest.raises(ConfigError, match=exact(message)):
        OpenAIJudge("http://127.0.0.1:1/v1", "m")


@pytest.mark.parametrize(
    ("retries", "timeout", "backoff", "refused"),
    [
        (0, 0.5, 0.0, False),  # the lowest values allowed: retries 0, any positive timeout, backoff 0
        (-1, 10.0, 1.0, True),
        (3, 0.0, 1.0, True),
        (3, 10.0, -0.1, True),
    ],
)
def test_openai_judge_limits_at_their_boundaries(retries, timeout, backoff, refused):
    """OpenAIJudge.__init__: ``retries < 0`` -> ``<= 0`` / ``< 1``; ``timeout > 0`` -> ``>= 0`` / ``> 1``;
    ``backoff < 0`` -> ``<= 0``; either ``or`` -> ``and`` (each bad value refused alone); the message
    -> None / "XX...XX" / upper case."""
    options = {"key_env": None, "retries": retries, "timeout": timeout, "backoff": backoff}
    if refused:
        with pytest.raises(
            ConfigError, match=exact("the openai judge needs retries >= 0, timeout > 0 and backoff >= 0")
        ):
            OpenAIJudge("http://127.0.0.1:1/v1", "m", **options)
    else:
        judge = OpenAIJudge("http://127.0.0.1:1/v1", "m", **options)
        judge.close()
        assert judge.retries == retries


def test_openai_judge_model_message_in_full():
    """OpenAIJudge.__init__: the missing-model message -> "XX...XX"; _openai's missing-URL message too."""
    message = "the openai judge needs --judge-model (the endpoint's model name, e.g. gpt-4o)"
    with pytest.raises(ConfigError, match=exact(message)):
        OpenAIJudge("http://127.0.0.1:1/v1", "", key_env=None)
    with pytest.raises(ConfigError, match=exact("the openai judge needs --judge-url (e.g. https://api.openai.com/v1)")):
        make_judge("openai", JudgeOptions(model="m"))


def test_chat_overrides_temperature_and_max_tokens():
    """OpenAIJudge.chat: the ``temperature``/``max_tokens`` overrides (``is None`` forced True or False
    or negated; the "max_tokens" key -> "XX...XX" / upper case)."""
    with openai_endpoint(lambda body: "safe") as endpoint:
        judge = OpenAIJudge(endpoint.url, "m", key_env=None, temperature=0.0, max_tokens=256)
        judge.chat([{"role": "user", "content": "x"}], temperature=0.7, max_tokens=5)
        judge.chat([{"role": "user", "content": "x"}])
        judge.close()
    (_, first), (_, second) = endpoint.requests
    assert (first["temperature"], first["max_tokens"]) == (0.7, 5)
    assert (second["temperature"], second["max_tokens"]) == (0.0, 256)


def test_openai_from_options_passes_model_and_key_env(monkeypatch):
    """_openai: ``options.model or ""`` -> ``and``; ``key_env=options.key_env`` -> None or dropped (the
    default variable would be read instead)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SG_JUDGE_KEY", "sk-own")
    with openai_endpoint(lambda body: "unsafe") as endpoint:
        judge = make_judge("openai", JudgeOptions(model="m", url=endpoint.url, key_env="SG_JUDGE_KEY"))
        assert judge.model == "m"
        assert [v.label for v in judge.judge(_cases(("q", "a")))] == ["unsafe"]
        judge.close()
    assert endpoint.requests[0][0]["Authorization"] == "Bearer sk-own"


# the registry


def test_unknown_judge_lists_the_names_comma_separated():
    """make_judge: ``", ".join(...)`` -> ``"XX, XX".join(...)``."""
    with pytest.raises(
        ConfigError, match=exact("unknown judge 'oracle'; choose one of complied, guard-model, openai, refusal")
    ):
        make_judge("oracle")


def test_a_registered_judge_is_built_from_the_options():
    """register_judge: ``_JUDGES[name] = factory`` -> None."""
    from smoothguard.eval.judges import register_judge

    class Fixed(SafetyJudge):
        name = "fixed"

        def __init__(self, model: str | None) -> None:
            self.model = model

        def judge(self, cases):
            return [Verdict("safe", "") for _ in cases]

    register_judge("fixed", lambda options: Fixed(options.model))
    try:
        assert "fixed" in JUDGES.names()
        assert make_judge("fixed", JudgeOptions(model="x")).model == "x"
    finally:
        del JUDGES.entries["fixed"]
