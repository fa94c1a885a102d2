"""The one registry every lookup by name goes through (models, purifiers, benchmarks, judges, parsers,
embedders)."""

from importlib.metadata import EntryPoint, EntryPoints, entry_points

import pytest

from smoothguard import registry
from smoothguard.errors import ConfigError
from smoothguard.registry import Registry
from support.common import exact

GROUP = "smoothguard.test-things"


@pytest.fixture
def installed(monkeypatch):
    """Installs entry points of ``GROUP`` (name -> "module:attr") beside the real ones of other groups."""

    def install(**targets: str) -> None:
        extra = [EntryPoint(name, value, GROUP) for name, value in targets.items()]
        real = entry_points
        monkeypatch.setattr(
            registry, "entry_points", lambda group: EntryPoints(extra) if group == GROUP else real(group=group)
        )

    return install


def test_names_are_the_built_ins_in_order_then_the_plugins_sorted(installed):
    things = Registry("thing", entries={"b": 1, "a": 2}, group=GROUP)
    installed(zeta="json:dumps", alpha="json:loads", b="json:load")
    assert things.names() == ["b", "a", "alpha", "zeta"]  # a built-in name wins over an entry point's
    assert things.get("b") == 1
    import json

    assert things.get("alpha") is json.loads
    assert things.target("zeta") == "json:dumps" and things.target("a") == "2"


def test_an_unknown_name_is_one_line_naming_every_choice(installed):
    things = Registry("thing", entries={"one": 1}, aliases={"uno": "one"}, group=GROUP)
    installed(two="json:dumps")
    for call in (things.get, things.canonical, things.target):
        with pytest.raises(ConfigError, match=exact("unknown thing 'three'; choose one of one, two")):
            call("three")
    assert "three" not in things and 3 not in things and "two" in things and "uno" in things


def test_aliases_and_lazy_references():
    things = Registry("thing", entries={"dumps": "json:dumps"}, aliases={"to-json": "dumps"})
    import json

    assert things.canonical("to-json") == "dumps"
    assert things.get("to-json") is json.dumps
    things.register("loads", "json:loads", aliases=("from-json",))
    assert things.get("from-json") is json.loads and things.names() == ["dumps", "loads"]
    things.register("dumps", len)  # a later registration replaces the earlier one
    assert things.get("dumps") is len and things.target("dumps") == repr(len)


@pytest.mark.parametrize(
    ("target", "why"),
    [("no.such.module:thing", "No module named 'no'"), ("json:no_such_attribute", "no_such_attribute")],
)
def test_a_reference_that_cannot_be_imported_says_so(target, why):
    things = Registry("thing", entries={"broken": target})
    message = rf"^thing 'broken' is registered as {target} but cannot be imported: .*{why}"
    with pytest.raises(ConfigError, match=message):
        things.get("broken")
    assert "broken" in things  # knowing a name imports nothing


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_a_registration_needs_a_name(name):
    with pytest.raises(ConfigError, match=exact(f"thing name must be a non-empty string, got {name!r}")):
        Registry("thing").register(name, 1)


def test_every_lookup_by_name_is_a_registry():
    from smoothguard.answers import PARSERS
    from smoothguard.embed import EMBEDDERS
    from smoothguard.eval.base import BENCHMARKS
    from smoothguard.eval.judges import JUDGES
    from smoothguard.models.auto import ADAPTERS, MODELS
    from smoothguard.purify import PURIFIERS

    assert PARSERS.names() == ["yes-no", "choice", "refusal"]
    assert EMBEDDERS.canonical("all-minilm-l6-v2") == "minilm"
    assert {"pope", "mm-safety", "llava-bench", "testbed-pope"} <= set(BENCHMARKS.names())
    assert JUDGES.names() == ["complied", "guard-model", "openai", "refusal"]
    assert "qwen2_5_vl" in ADAPTERS and "testbed" in MODELS and "testbed-denoiser" in PURIFIERS
