"""The README and the pages it links to stay true: every relative link resolves, and the README's
table of environment variables is the one the resources read. No Stan here."""

import re
from pathlib import Path

import pytest

from schoolquality_assets.defs.resources import SAMPLER_ENV
from schoolquality_assets.warehouse import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "ARCHITECTURE.md", "benchmarks/README.md", "stan/README.md", "schoolquality_assets/engine/README.md",
         "schoolquality_assets/defs/README.md", "schoolquality_assets/analyses/README.md",
         "schoolquality_assets/ingest/README.md", "warehouse/README.md"]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+)$", _without_code_blocks(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("name", PAGES)
def test_every_relative_link_resolves(name):
    page = ROOT / name
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code_blocks(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file) if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{name}: broken links {broken}"


def test_the_readme_lists_every_variable_with_its_default():
    section = (ROOT / "README.md").read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(SCHOOLQUALITY_\w+)` \| ([^|]+) \|", section, flags=re.M))
    assert set(rows) == {s.variable for s in SAMPLER_ENV.values()} | {ENV_VAR}
    for setting in SAMPLER_ENV.values():
        default = int(setting.default) if isinstance(setting.default, bool) else setting.default
        shown = rows[setting.variable].strip().strip("`")
        assert shown == str(default) or (isinstance(default, float) and float(shown) == default), setting.variable
