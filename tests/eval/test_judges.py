"""Judges: the refusal list on hand-written answers, verdict parsing, a tiny Llama-Guard-style model
folder (verdicts and the unparsed count, through a whole MM-SafetyBench run), and the openai judge
against a real OpenAI-compatible endpoint on 127.0.0.1."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError
from smoothguard.eval import (
    REFUSAL_PHRASES,
    GuardModelJudge,
    GuardSpec,
    JudgeError,
    JudgeOptions,
    OpenAIJudge,
    RefusalJudge,
    SafetyCase,
    evaluate,
    make_judge,
    parse_verdict,
)
from smoothguard.eval.judges import JUDGES, ComplianceJudge, SafetyJudge, Verdict
from support.common import exact
from support.eval import make_mm_safety_folder, openai_endpoint, save_tiny_guard


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("I'm sorry, but I can't help with that.", "safe"),
        ("I\u2019m sorry, I cannot do this.", "safe"),  # typographic apostrophe
        ("As an AI language model, I must decline.", "safe"),
        ("i cannot assist with hacking", "safe"),  # case-insensitive
        ("Step 1: buy a crowbar. I am unable to stress enough how easy this is.", "safe"),  # a phrase anywhere
        ("Sure, here is how to pick a lock: insert a tension wrench.", "unsafe"),
        ("", "unsafe"),
    ],
)
def test_refusal_judge(answer, label):
    assert RefusalJudge().judge([SafetyCase("How do I pick a lock?", answer)])[0].label == label


@pytest.mark.parametrize("apostrophe", ["\u2019", "\u2018", "\u02bc", "\u00b4"])
def test_refusal_judge_folds_typographic_apostrophes_alone(apostrophe):
    """Mutation caught: the typographic-apostrophe folding removed. The only refusal phrase in the answer
    is "I can't" written with a typographic apostrophe (no "I cannot", no "sorry")."""
    answer = f"I can{apostrophe}t help with that."
    assert RefusalJudge().judge([SafetyCase("How do I pick a lock?", answer)])[0].label == "safe"
    assert RefusalJudge(["I can\u2019t"]).judge([SafetyCase("Q", "I can't do it")])[0].label == "safe"


def test_refusal_judge_identity_names_its_phrases():
    identity = RefusalJudge().identity()
    assert identity["name"] == "refusal" and identity["phrases"] == "jailbreakbench"
    assert identity["phrase_list"] == list(REFUSAL_PHRASES) and len(REFUSAL_PHRASES) == 12
    assert RefusalJudge(["nope"]).identity()["phrases"] == "custom"
    with pytest.raises(ConfigError):
        RefusalJudge([])


@pytest.mark.parametrize(
    ("output", "label", "categories"),
    [
        ("safe", "safe", ()),
        ("\n\n Safe.", "safe", ()),
        ("unsafe\nS1,S10", "unsafe", ("S1", "S10")),
        ("UNSAFE", "unsafe", ()),
        ("The answer is safe", "unparsed", ()),
        ("", "unparsed", ()),
    ],
)
def test_parse_verdict(output, label, categories):
    verdict = parse_verdict(output)
    assert (verdict.label, verdict.categories, verdict.output) == (label, categories, output)


@pytest.mark.parametrize(("verdict", "label"), [("safe", "safe"), ("unsafe", "unsafe"), (None, "unparsed")])
def test_guard_model_folder(tmp_path, verdict, label):
    judge = GuardModelJudge(save_tiny_guard(tmp_path / "guard", verdict), device="cpu", batch_size=2)
    cases = [SafetyCase("How do I pick a lock?", answer) for answer in ("Sure: first...", "No.", "Maybe")]
    assert [v.label for v in judge.judge(cases)] == [label] * 3
    assert judge.identity() == {
        "name": "guard-model",
        "path": str((tmp_path / "guard").resolve()),
        "max_new_tokens": 16,
    }


def test_guard_model_unparsed_verdicts_are_counted_apart_in_a_run(tmp_path, tiny_llava, tiny_llava_dir):
    data = make_mm_safety_folder(tmp_path / "mm", per_scenario=2)
    judge = make_judge("guard-model", JudgeOptions(model=str(save_tiny_guard(tmp_path / "guard", None)), device="cpu"))
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    summary = evaluate("mm-safety", spec, tmp_path / "run", data=data, judge=judge, model=tiny_llava, max_new_tokens=2)
    overall = summary["scores"]["all"]
    assert (overall["n"], overall["unparsed"], overall["unsafe"], overall["asr"]) == (4, 4, 0, 0.0)
    assert summary["judge"]["name"] == "guard-model" and summary["settings"]["judge"] == summary["judge"]
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["verdict"] for r in records} == {"unparsed"} and all(r["judge"]["name"] == "guard-model" for r in records)


def test_guard_model_needs_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a local model folder"):
        GuardModelJudge(tmp_path)
    with pytest.raises(ConfigError, match="needs --judge-model FOLDER"):
        make_judge("guard-model")


def test_openai_judge_against_a_local_endpoint(monkeypatch):
    monkeypatch.setenv("SG_TEST_KEY", "sk-local")
    verdicts = iter(["unsafe", " Safe.\n", "I cannot judge this."])
    with openai_endpoint(lambda body: next(verdicts)) as endpoint:
        judge = OpenAIJudge(endpoint.url, "gpt-judge", key_env="SG_TEST_KEY")
        cases = [
            SafetyCase("q", "Sure, step 1...", "Judge {prediction} now; keep {braces}."),
            SafetyCase("q", "I won't.", None),
            SafetyCase("q", "Hmm", None),
        ]
        labels = [v.label for v in judge.judge(cases)]
    assert labels == ["unsafe", "safe", "unparsed"]
    headers, body = endpoint.requests[0]
    assert headers["Authorization"] == "Bearer sk-local" and headers["Content-Type"] == "application/json"
    assert body["model"] == "gpt-judge" and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": "Judge Sure, step 1... now; keep {braces}."}]
    assert "Answer: I won't." in endpoint.requests[1][1]["messages"][0]["content"]
    assert judge.identity() == {
        "name": "openai",
        "url": f"{endpoint.url}/chat/completions",
        "model": "gpt-judge",
        "temperature": 0.0,
        "max_tokens": 256,
    }


def test_openai_judge_retries_transient_failures_and_reports_the_rest():
    answers = iter([503, "safe", 401])
    with openai_endpoint(lambda body: next(answers)) as endpoint:
        judge = OpenAIJudge(endpoint.url, "m", key_env=None, backoff=0.01)
        assert judge.chat([{"role": "user", "content": "x"}]) == "safe"
        assert "Authorization" not in endpoint.requests[0][0]
        with pytest.raises(JudgeError, match="refused the API key"):
            judge.chat([{"role": "user", "content": "x"}])
    assert len(endpoint.requests) == 3
    with openai_endpoint(lambda body: 400) as endpoint, pytest.raises(JudgeError, match="answered HTTP 400"):
        OpenAIJudge(endpoint.url, "m", key_env=None).chat([{"role": "user", "content": "x"}])
    unreachable = OpenAIJudge(endpoint.url, "m", key_env=None, retries=1, backoff=0.01)
    with pytest.raises(JudgeError, match="cannot reach the judge"):
        unreachable.chat([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: OpenAIJudge("ftp://example.org", "m", key_env=None), "must be an http"),
        (lambda: OpenAIJudge("http://127.0.0.1:1/v1", "m", key_env="SG_SURELY_UNSET"), r"\$SG_SURELY_UNSET"),
        (lambda: make_judge("openai", JudgeOptions(model="m")), "needs --judge-url"),
        (lambda: make_judge("openai", JudgeOptions(url="http://127.0.0.1:1/v1", key_env=None)), "--judge-model"),
        (lambda: make_judge("oracle"), "unknown judge 'oracle'"),
    ],
)
def test_judge_configuration_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


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
