"""Text cells that a spreadsheet will not run as formulas.

Tag values, model names and user ids are chosen by callers; a CSV cell that
starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to
Excel and LibreOffice (CSV injection). Such text is written with a leading
apostrophe, which spreadsheets show as plain text. Numbers and money are
never passed through here: a negative amount stays a number.
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) else text


def safe_cell(value: Any) -> Any:
    """`safe_text` for strings; anything else (numbers, None) unchanged."""
    return safe_text(value) if isinstance(value, str) else value
