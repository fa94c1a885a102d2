"""Batching of concurrent requests to a local model: the ``Batcher`` itself (no model), then real uvicorn
servers on 127.0.0.1 with the tiny LLaVA. Concurrency is made deterministic, not timed: a batch forms
when ``max_batch_queries`` requests are waiting, and the window is far longer than any test, so the
requests a test sends together are one batch whatever the scheduling; answers alone come from a server
with ``max_batch_queries`` 1."""

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from smoothguard import SmoothGuard
from smoothguard.errors import ConfigError, InputError
from smoothguard.inputs import load_image
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from smoothguard.server.batching import Batcher, _Pending
from smoothguard.server.service import GuardService, request_noise_id
from support.server import data_uri, error_of, image_part, png_bytes, post, user

LONG = 60_000  # ms: no test waits for it; batches form when full


SIGMA, COPIES, TOKENS = 0.5, 2, 5


class Recorder:
    """A batch function that records its calls; ``gate`` holds the first call until set; items named
    ``bad`` make their batch raise."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, group, items):
        self.calls.append((group, list(items)))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if "bad" in items:
            raise ValueError("bad item")
        return [f"{group}:{item}" for item in items]


def submit_all(batcher, pairs):
    return [batcher.submit(group, item) for group, item in pairs]


def test_a_full_group_is_one_batch_and_outcomes_go_to_their_items():
    run = Recorder()
    batcher = Batcher(run, window=LONG / 1000, max_items=4)
    with ThreadPoolExecutor(4) as pool:
        futures = list(pool.map(lambda item: batcher.submit("g", item), ["a", "b", "c", "d"]))
    answers = [future.result(30) for future in futures]
    assert answers == ["g:a", "g:b", "g:c", "g:d"]
    ((group, items),) = run.calls
    assert group == "g" and sorted(items) == ["a", "b", "c", "d"]


def test_groups_are_never_mixed_and_a_full_group_goes_first():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, window=LONG / 1000, max_items=2)
    first, second = batcher.submit("x", "x0"), batcher.submit("x", "x1")
    assert run.started.wait(30)  # the batch [x0, x1] holds the worker until the gate opens
    futures = submit_all(batcher, [("a", "a1"), ("b", "b1"), ("b", "b2"), ("a", "a2")])
    assert batcher.pending() == 4
    gate.set()
    assert [f.result(30) for f in (first, second, *futures)] == ["x:x0", "x:x1", "a:a1", "b:b1", "b:b2", "a:a2"]
    # b filled before a did; both were full when the worker came back, and a's oldest item came first.
    assert run.calls == [("x", ["x0", "x1"]), ("a", ["a1", "a2"]), ("b", ["b1", "b2"])]


def test_one_at_a_time_in_arrival_order_with_max_items_1():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = Batcher(run, window=LONG / 1000, max_items=1)
    futures = [batcher.submit("g", "first")]
    assert run.started.wait(30)
    futures += submit_all(batcher, [("h", "second"), ("g", "third"), ("g", "fourth")])
    gate.set()
    assert [f.result(30) for f in futures] == ["g:first", "h:second", "g:third", "g:fourth"]
    assert [items for _, items in run.calls] == [["first"], ["second"], ["third"], ["fourth"]]


def test_the_window_bounds_the_wait_of_a_lone_item():
    run = Recorder()
    batcher = Batcher(run, window=0.05, max_items=8)
    began = time.monotonic()
    assert batcher.submit("g", "alone").result(30) == "g:alone"
    assert time.monotonic() - began >= 0.05 and run.calls == [("g", ["alone"])]


def test_when_a_batch_closes():
    """The rule on given arrival times (no clock): a window without a new request, counted from the free
    model when that is later, at most max_items windows in all."""
    batcher = Batcher(Recorder(), window=0.01, max_items=4)

    def due(*arrivals, free=0.0):
        batcher._free_since = free
        return round(batcher._due([_Pending(str(t), t) for t in arrivals]), 6)

    assert due(100.0) == 100.01  # a lone request waits one window
    assert due(100.0, 100.008) == 100.018  # each newcomer extends it by a window
    assert due(100.0, 100.009, 100.018, 100.027, 100.036) == 100.04  # never past max_items windows
    assert due(100.0, free=100.5) == 100.51  # the window opens when the model is free again


def test_a_failing_batch_is_answered_again_one_by_one():
    run = Recorder()
    batcher = Batcher(run, window=LONG / 1000, max_items=3)
    with ThreadPoolExecutor(3) as pool:
        futures = list(pool.map(lambda item: batcher.submit("g", item), ["a", "bad", "c"]))
    good = [f for f, item in zip(futures, ["a", "bad", "c"], strict=True) if item != "bad"]
    assert sorted(f.result(30) for f in good) == ["g:a", "g:c"]
    with pytest.raises(ValueError, match="bad item"):
        futures[1].result(30)
    batch, *alone = run.calls
    assert len(batch[1]) == 3 and sorted(items[0] for _, items in alone) == ["a", "bad", "c"]


def test_the_worker_stops_when_idle_and_starts_again():
    batcher = Batcher(Recorder(), window=0, max_items=2, idle=0.01)
    assert batcher.submit("g", "a").result(30) == "g:a"
    deadline = time.monotonic() + 30
    while batcher._worker is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher._worker is None
    assert batcher.submit("g", "b").result(30) == "g:b"


@pytest.mark.parametrize("kwargs", [{"window": -1, "max_items": 2}, {"window": 0, "max_items": 0}])
def test_batcher_options_are_checked(kwargs):
    with pytest.raises(ConfigError):
        Batcher(Recorder(), **kwargs)


@pytest.mark.parametrize(
    ("field", "value"), [("batch_window_ms", -1), ("batch_window_ms", float("nan")), ("max_batch_queries", 0)]
)
def test_batching_settings_are_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        ServerSettings(**{field: value})


@pytest.fixture
def generate_shapes(tiny_llava, monkeypatch):
    """Every HF ``generate`` call of the tiny LLaVA: (rows, padded prompt length, padded rows, max_new_tokens)."""
    calls = []
    generate = tiny_llava.model.generate

    def recording(**batch):
        mask = batch["attention_mask"]
        calls.append((mask.shape[0], mask.shape[1], int((mask == 0).any(1).sum()), batch["max_new_tokens"]))
        return generate(**batch)

    monkeypatch.setattr(tiny_llava.model, "generate", recording)
    return calls


def serve(model, embedder, **settings):
    guard = SmoothGuard(model, sigma=SIGMA, num_copies=COPIES, embedder=embedder, seed=3)
    options = {"default_max_new_tokens": TOKENS, "fixed_seed": True, **settings}
    return BackgroundServer(create_app(guard, ServerSettings(**options)))


def body(prompt, seed=0, size=(48, 40), **extra):
    options = {"return_candidates": True, **extra.pop("smoothguard", {})}
    return {"messages": user(prompt, image_part(data_uri(png_bytes(seed, size=size)))), "smoothguard": options, **extra}


def answer(url, request):
    response = post(url, request)
    assert response.status_code == 200, response.text
    return response.json()


def evidence_of(completion):
    """What must not differ between a request alone and in a batch (``fingerprint`` on the raw JSON)."""
    evidence = {k: v for k, v in completion["smoothguard"].items() if k not in ("timings", "batch_queries")}
    return completion["choices"][0]["message"]["content"], sorted(evidence.items(), key=str)


def together(url, requests):
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: post(url, request), requests))


# Different prompt lengths and image sizes (LLaVA resizes every image to its own size; the prompts are
# left-padded to the longest).
MIXED = [
    body("Hi?", seed=1, size=(48, 40)),
    body("What is in the image? Describe every object, its colour and where it is.", seed=2, size=(64, 64)),
    body("Name the main colour.", seed=3, size=(30, 70)),
    body("Is there a person in this picture, and if so, what are they doing?", seed=4, size=(80, 20)),
    body("Count the objects.", seed=5, size=(20, 20)),
]


def test_a_batch_of_mixed_requests_answers_each_as_if_alone(tiny_llava, minilm, generate_shapes):
    with serve(tiny_llava, minilm, max_batch_queries=1) as alone_server:
        alone = [answer(alone_server.url, request) for request in MIXED]
    assert len(generate_shapes) == len(MIXED) and all(rows == COPIES + 1 for rows, *_ in generate_shapes)
    assert len({completion["choices"][0]["message"]["content"] for completion in alone}) >= 3  # mix-ups would show
    generate_shapes.clear()
    with serve(tiny_llava, minilm, batch_window_ms=LONG, max_batch_queries=len(MIXED)) as batched:
        responses = together(batched.url, MIXED)
    batch = [response.json() for response in responses]
    assert [evidence_of(c) for c in batch] == [evidence_of(c) for c in alone]
    # They really shared one generate call, with left padding.
    ((rows, _length, padded, new_tokens),) = generate_shapes
    assert (rows, new_tokens) == (len(MIXED) * (COPIES + 1), TOKENS) and 0 < padded < rows
    assert all(c["smoothguard"]["batch_queries"] == len(MIXED) for c in batch)
    assert all(c["smoothguard"]["batch_queries"] == 1 for c in alone)
    timings = [c["smoothguard"]["timings"] for c in batch]
    assert all(t["queue"] >= 0 and t["generate"] > 0 for t in timings)


def test_the_server_answers_as_the_library_does_with_the_request_noise_id(tiny_llava, minilm):
    request = MIXED[1]
    prompt = request["messages"][0]["content"][0]["text"]
    pixels = load_image(Image.open(io.BytesIO(png_bytes(2, size=(64, 64)))))
    guard = SmoothGuard(tiny_llava, sigma=SIGMA, num_copies=COPIES, embedder=minilm, seed=3)
    with serve(tiny_llava, minilm) as server:
        served = answer(server.url, {**request, "smoothguard": {"return_candidates": True, "seed": 11}})
    evidence = served["smoothguard"]
    assert (evidence["seed"], evidence["seed_source"]) == (11, "request")
    direct = guard.generate(prompt, image=pixels, query_id=request_noise_id(11, prompt, pixels), max_new_tokens=TOKENS)
    assert evidence["candidates"] == direct.candidates and served["choices"][0]["message"]["content"] == direct.text
    # The noise id carries the seed: another seed draws other noise (this comparison has teeth).
    other = guard.generate(prompt, image=pixels, query_id=request_noise_id(12, prompt, pixels), max_new_tokens=TOKENS)
    assert other.candidates[1:] != direct.candidates[1:]


GROUPS = {
    "defaults": {},
    "fewer copies": {"smoothguard": {"num_copies": 1}},
    "other sigma": {"smoothguard": {"sigma": 0.25}},
    "other max_tokens": {"max_tokens": 3},
}


def test_requests_with_different_settings_are_not_mixed(tiny_llava, minilm, generate_shapes):
    per_group = 2
    requests = [
        (name, body(f"Question {i} of {name}: what do you see?", seed=10 + i, size=(40 + 8 * i, 40), **extra))
        for name, extra in GROUPS.items()
        for i in range(per_group)
    ]
    with serve(tiny_llava, minilm, max_batch_queries=1) as alone_server:
        alone = [evidence_of(answer(alone_server.url, request)) for _, request in requests]
    generate_shapes.clear()
    with serve(tiny_llava, minilm, batch_window_ms=LONG, max_batch_queries=per_group) as batched:
        responses = together(batched.url, [request for _, request in requests])
    assert [evidence_of(response.json()) for response in responses] == alone
    assert all(response.json()["smoothguard"]["batch_queries"] == per_group for response in responses)
    # One generate call per group, each holding that group's candidates only (3 or 2 per request).
    expected = [(per_group * 3, TOKENS), (per_group * 2, TOKENS), (per_group * 3, TOKENS), (per_group * 3, 3)]
    assert sorted((rows, new) for rows, _, _, new in generate_shapes) == sorted(expected)


BAD = {
    "not an image": (user("What is it?", image_part(data_uri(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10))), 422),
    "image over the pixel limit": (user("What is it?", image_part(data_uri(png_bytes(0, size=(100, 100))))), 413),
    "NUL in the prompt": (user("What\x00 is it?", image_part(data_uri(png_bytes(0)))), 422),
    "special token in the prompt": (user("What is <image> it?", image_part(data_uri(png_bytes(0)))), 422),
    "prompt over the limit": (user("tok " * 80, image_part(data_uri(png_bytes(0)))), 413),
}


def test_bad_requests_fail_alone_before_batching(tiny_llava, minilm, generate_shapes):
    good = MIXED[:3]
    with serve(tiny_llava, minilm, max_batch_queries=1, max_image_pixels=80 * 80, max_prompt_tokens=64) as alone_server:
        alone = [evidence_of(answer(alone_server.url, request)) for request in good]
    generate_shapes.clear()
    bad = [{"messages": messages} for messages, _ in BAD.values()]
    limits = {"max_image_pixels": 80 * 80, "max_prompt_tokens": 64}
    with serve(tiny_llava, minilm, batch_window_ms=LONG, max_batch_queries=len(good), **limits) as batched:
        responses = together(batched.url, [*good, *bad])
    assert [evidence_of(response.json()) for response in responses[: len(good)]] == alone
    for response, (name, (_, status)) in zip(responses[len(good) :], BAD.items(), strict=True):
        assert response.status_code == status, (name, response.text)
        error_of(response)
    assert len(generate_shapes) == 1  # the bad ones never reached the model: the good ones were one batch


def test_a_request_that_fails_its_batch_is_answered_alone_and_fails_alone(tiny_llava, minilm, monkeypatch):
    """An input the guard refuses only inside ``generate_batch`` (here: a prompt the adapter refuses) makes
    the batch raise; each request is then answered alone, so only that one fails."""
    refuse = tiny_llava.prompt_text

    def prompt_text(prompt, media):
        if "POISON" in prompt:
            raise InputError("this prompt is refused by the adapter")
        return refuse(prompt, media)

    good = MIXED[:3]
    with serve(tiny_llava, minilm, max_batch_queries=1) as alone_server:
        alone = [evidence_of(answer(alone_server.url, request)) for request in good]
    monkeypatch.setattr(tiny_llava, "prompt_text", prompt_text)
    requests = [good[0], body("POISON: what is it?", seed=7), good[1], good[2]]
    with serve(tiny_llava, minilm, batch_window_ms=LONG, max_batch_queries=len(requests)) as batched:
        responses = together(batched.url, requests)
    poisoned = responses.pop(1)
    assert poisoned.status_code == 422 and "refused by the adapter" in error_of(poisoned)["message"]
    assert [evidence_of(response.json()) for response in responses] == alone
    assert all(response.json()["smoothguard"]["batch_queries"] == 1 for response in responses)


def test_a_batch_the_model_fails_is_answered_request_by_request(tiny_llava, minilm, generate_shapes, monkeypatch):
    """The model failing on the batch (out of memory, say) fails no request: each is answered alone."""
    generate = tiny_llava.model.generate

    def fails_on_batches(**batch):
        if batch["input_ids"].shape[0] > COPIES + 1:
            raise RuntimeError("out of memory (scripted)")
        return generate(**batch)

    good = MIXED[:3]
    with serve(tiny_llava, minilm, max_batch_queries=1) as alone_server:
        alone = [evidence_of(answer(alone_server.url, request)) for request in good]
    monkeypatch.setattr(tiny_llava.model, "generate", fails_on_batches)
    with serve(tiny_llava, minilm, batch_window_ms=LONG, max_batch_queries=len(good)) as batched:
        responses = together(batched.url, good)
    assert [evidence_of(response.json()) for response in responses] == alone


def test_fresh_seeds_in_one_batch_and_each_returned_seed_reproduces_its_answer(tiny_llava, minilm, generate_shapes):
    request = body("What do you see?", seed=5)
    count = 4
    with serve(tiny_llava, minilm, fixed_seed=False, batch_window_ms=LONG, max_batch_queries=count) as batched:
        first = [response.json()["smoothguard"] for response in together(batched.url, [request] * count)]
        assert len(generate_shapes) == 1 and all(e["batch_queries"] == count for e in first)
        assert len({e["seed"] for e in first}) == count and {e["seed_source"] for e in first} == {"random"}
        # Fresh noise per request, in one batch: the seeds differ (the tiny model's answers may still coincide,
        # so they are not compared here: whether an OS-random seed changes them is chance).
        # The same request with a returned seed, in a batch of others: that request's answer again.
        again = [{**request, "smoothguard": {"return_candidates": True, "seed": e["seed"]}} for e in first]
        second = [response.json()["smoothguard"] for response in together(batched.url, again)]
    assert [e["candidates"] for e in second] == [e["candidates"] for e in first]
    assert [e["seed"] for e in second] == [e["seed"] for e in first]
    assert {e["seed_source"] for e in second} == {"request"}
    with serve(tiny_llava, minilm, fixed_seed=False, max_batch_queries=1) as alone_server:
        lone = answer(alone_server.url, again[2])["smoothguard"]
    assert lone["candidates"] == first[2]["candidates"]


def test_a_batch_shares_one_time_budget(tiny_llava, minilm, generate_shapes):
    requests = [body(f"Describe it, {i}.", seed=i, max_tokens=12) for i in range(3)]
    settings = {"request_timeout": 1e-6, "max_new_tokens": 16, "batch_window_ms": LONG, "max_batch_queries": 3}
    with serve(tiny_llava, minilm, **settings) as hurried:
        responses = together(hurried.url, requests)
        health = httpx.get(f"{hurried.url}/health").json()
    assert health["batching"] == {"window_ms": LONG, "max_queries": 3}
    evidence = [response.json()["smoothguard"] for response in responses]
    assert all(e["time_budget_exceeded"] and e["batch_queries"] == 3 for e in evidence)
    assert [(rows, new) for rows, _, _, new in generate_shapes] == [(9, 12)]


def test_the_service_batches_without_http(tiny_llava, minilm, generate_shapes):
    """The service API directly, from threads: the same batching as over HTTP."""

    guard = SmoothGuard(tiny_llava, sigma=SIGMA, num_copies=COPIES, embedder=minilm, seed=3)
    service = GuardService(guard, ServerSettings(fixed_seed=True, batch_window_ms=LONG, max_batch_queries=3))
    bodies = [json.dumps(request).encode() for request in MIXED[:3]]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(service.complete, bodies))
    assert [a["smoothguard"]["batch_queries"] for a in answers] == [3, 3, 3] and len(generate_shapes) == 1
