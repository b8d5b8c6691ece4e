"""Tags: where a call's attribution comes from, and what a valid tag is."""

from __future__ import annotations

import re

from spendgate.config import TagRules
from spendgate.errors import GatewayError

TAGS_HEADER = "x-spendgate-tags"
SINGLE_PREFIX = "x-spendgate-"
# x-spendgate-* headers that are not tags
NOT_TAGS = frozenset({TAGS_HEADER, "x-spendgate-request-id", "x-spendgate-cost", "x-spendgate-cache"})

_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")


def header_tags(headers: dict[str, str]) -> dict[str, str]:
    """`x-spendgate-tags: team=search,feature=faq` plus single `x-spendgate-team: search` headers."""
    tags: dict[str, str] = {}
    combined = headers.get(TAGS_HEADER)
    if combined:
        for item in combined.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep:
                raise GatewayError(400, f"Malformed {TAGS_HEADER} entry {item!r}: expected name=value.", param=TAGS_HEADER)
            tags[name.strip().replace("-", "_").lower()] = value.strip()
    for name, value in headers.items():
        if name.startswith(SINGLE_PREFIX) and name not in NOT_TAGS:
            tags[name[len(SINGLE_PREFIX) :].replace("-", "_")] = value.strip()
    return tags


def validate_tags(tags: dict[str, str], rules: TagRules) -> None:
    if len(tags) > rules.max_tags:
        raise GatewayError(400, f"Too many tags: {len(tags)} (at most {rules.max_tags}).", param="tags")
    for name, value in tags.items():
        if len(name) > rules.max_name_length or not _NAME.match(name):
            raise GatewayError(
                400,
                f"Invalid tag name {name!r}: use lower-case letters, digits, '_', '-' or '.', "
                f"starting with a letter, at most {rules.max_name_length} characters.",
                param="tags",
            )
        if not value or len(value) > rules.max_value_length or not value.isprintable():
            raise GatewayError(
                400,
                f"Invalid value for tag {name!r}: must be 1 to {rules.max_value_length} printable characters.",
                param="tags",
            )


def usable_tags(tags: dict[str, str], rules: TagRules) -> dict[str, str]:
    """The subset of `tags` that passes validation (for body metadata)."""
    out: dict[str, str] = {}
    for name, value in tags.items():
        try:
            validate_tags({name: value}, rules)
        except GatewayError:
            continue
        out[name] = value
        if len(out) >= rules.max_tags:
            break
    return out
