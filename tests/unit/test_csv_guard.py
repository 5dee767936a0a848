"""The CSV export's formula guard: any text cell a spreadsheet would evaluate is written as text
(a leading apostrophe); other text, and numbers, are written as they are."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.csv_export import cell, is_formula


@pytest.mark.parametrize(
    "value",
    [
        "=1+1",
        "+1+1",
        "-1+1",
        "@SUM(A1)",
        " =1+1",  # leading spaces are skipped by spreadsheets
        "\xa0=1+1",  # no-break space
        "\t=1+1",
        "\r=1+1",
        "\u200b=1+1",  # zero-width space
        "\u200e\u200f=1+1",  # direction marks
        "\u2060=1+1",  # word joiner
        "\ufeff=1+1",  # byte order mark
        "\u200b \u200d =1+1",
        "\uff1d1+1",  # full-width equals sign
        "\uff0b1+1",
        "\uff0d1+1",
        "\uff20SUM(A1)",
        "﹦1+1",  # small equals sign
        "x;=1+1",  # a formula after a separator the spreadsheet may split on
        "x,=1+1",
        "x|=1+1",
        "x; =1+1",
        "x;\uff1d1+1",
        "x;\u200b=1+1",
        "name\t=1+1",
        "line\n=1+1",
        "x;@SUM(A1)",
        "cmd|' /C calc'!A0",  # dynamic data exchange
        "=cmd|' /C calc'!A0",
        'DDE("cmd";"/C calc";"x")',
        "ddeauto c:\\windows\\calc.exe",
    ],
)
def test_cells_a_spreadsheet_would_evaluate_are_written_as_text(value: str) -> None:
    assert is_formula(value)
    assert cell(value) == "'" + value


@pytest.mark.parametrize(
    "value",
    [
        "plain text",
        "Acme Corp",
        "acme-eu",  # a minus inside a word
        "a, b; c | d",
        "Stripe answered 400: Invalid email address (request req_123)",
        "mb_4_1a2b3c",
        "",
        "50% off",
        "user@example.com",  # an @ inside the text
        "1+1",
    ],
)
def test_plain_text_is_untouched(value: str) -> None:
    assert not is_formula(value)
    assert cell(value) == value


def test_numbers_stay_numbers() -> None:
    assert cell(Decimal("-5")) == "-5"  # a negative quantity is a number, not a formula
    assert cell(Decimal("0.250000000000")) == "0.25"
    assert cell(42) == 42
    assert cell(None) == ""
    assert cell(datetime(2026, 11, 20, 13, tzinfo=UTC)) == "2026-11-20T13:00:00Z"
