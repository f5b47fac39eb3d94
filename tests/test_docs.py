"""The documentation stays current: generated pages equal their generators' output, every docs page is
reachable from the README, the README fits a first read, and no relative link points nowhere."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def _script(name: str):
    """A module of scripts/, imported from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def links(text: str) -> list[str]:
    """Targets of the markdown links in ``text``, code blocks and code spans left out."""
    return LINK.findall(CODE.sub("", FENCE.sub("", text)))


def broken_links(md: Path, text: str | None = None) -> list[str]:
    """Relative link targets of ``md`` that name no existing file or directory (anchors and URLs are not checked)."""
    text = md.read_text(encoding="utf-8") if text is None else text
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (md.parent / path).exists():
            bad.append(target)
    return bad


def unlinked_docs(readme_text: str, docs: list[Path]) -> list[str]:
    """docs/*.md files the README does not link to."""
    targets = {t.split("#", 1)[0].removeprefix("./") for t in links(readme_text)}
    return [d.relative_to(ROOT).as_posix() for d in docs if d.relative_to(ROOT).as_posix() not in targets]


def test_configuration_page_is_generated_from_the_config():
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == _script("config_docs").render(), \
        "docs/configuration.md is stale: run python scripts/config_docs.py"


def test_results_page_is_generated_from_the_results_json():
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == _script("results_tables").render(), \
        "docs/results.md is stale: run python scripts/results_tables.py"


def test_readme_headline_table_is_the_one_the_results_give():
    tables, readme = _script("results_tables"), " ".join(README.read_text(encoding="utf-8").split())
    assert " ".join(tables.headline_table().split()) in readme, \
        "README.md's results table differs from scripts/results_tables.py's headline_table()"
    assert " ".join(tables.stack_headline().split()) in readme, \
        "README.md's sentence on survey stacks differs from scripts/results_tables.py's stack_headline()"


def test_every_docs_page_is_linked_from_the_readme_and_the_readme_is_short():
    assert DOCS, "no docs/*.md found"
    text = README.read_text(encoding="utf-8")
    assert unlinked_docs(text, DOCS) == []
    n = len(text.splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it to {MAX_README_LINES} and move detail to docs/"


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files_that_exist(md):
    assert broken_links(md) == []


# The checks above can fail: each is shown a case it must catch.

def test_the_link_checks_see_a_broken_link_and_an_unlinked_page():
    text = "[ok](README.md) [gone](docs/no-such-page.md) [web](https://example.org/x.md) [here](#install)\n" \
           "`[code](not-a-link.md)`\n```\n[fenced](not-a-link-either.md)\n```\n"
    assert broken_links(README, text) == ["docs/no-such-page.md"]
    assert unlinked_docs("[m](docs/method.md)", [ROOT / "docs" / "method.md", ROOT / "docs" / "x.md"]) == ["docs/x.md"]


def test_the_configuration_page_follows_the_model(monkeypatch):
    from magpipe.config import PatchConfig, RunConfig

    config_docs = _script("config_docs")
    text = config_docs.render()
    for section, field in RunConfig.model_fields.items():
        model = config_docs.section_model(field)
        for name, f in (model.model_fields.items() if model else ()):
            assert f"`{section}.{name}`" in text
    monkeypatch.setattr(PatchConfig.model_fields["n_patches"], "description", "A description only the model has.")
    monkeypatch.setattr(PatchConfig.model_fields["n_patches"], "default", 1234)
    changed = config_docs.render()
    assert "A description only the model has." in changed and "`1234`" in changed and changed != text


def test_the_results_page_follows_the_json(monkeypatch):
    results_tables = _script("results_tables")
    text, load = results_tables.render(), results_tables.load

    def edited(name):
        data = copy.deepcopy(load(name))
        if name == "accuracy-demo-default.json":
            data["feature_sets"]["ae"]["balanced_accuracy"]["mean"] = 0.987
        return data

    monkeypatch.setattr(results_tables, "load", edited)
    sd = load("accuracy-demo-default.json")["feature_sets"]["ae"]["balanced_accuracy"]["std"]
    assert f"98.7 ± {100 * sd:.1f}" in results_tables.headline_table()
    assert results_tables.render() != text
