"""The Visibility guide quotes the demo's config and links pages and images that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "visibility.md"


def test_the_guide_quotes_the_demo_alert_rules_verbatim() -> None:
    text = GUIDE.read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert block.startswith("alerts:")
    assert block in (REPO / "examples" / "demo.yaml").read_text()


def test_every_link_and_image_in_the_guide_exists() -> None:
    text = GUIDE.read_text()
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    local = [t for t in targets if not t.startswith("http")]
    assert len(local) >= 10
    missing = [t for t in local if not (GUIDE.parent / t).exists()]
    assert not missing, missing
