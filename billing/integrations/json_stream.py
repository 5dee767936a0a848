"""Reads one array of a JSON object an item at a time.

OpenMeter answers a query with one row per subject: 100,000 customers make an answer of 12 MB
that `json.loads` turns into 60 MB of dicts at once. Decoding the rows one by one (each with the
standard decoder) keeps a single row's objects alive while the caller totals them.
"""

import json
import re
from collections.abc import Generator, Iterator
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


class NotAnArray(LookupError):
    """The object has no such member, or its value is not an array."""


def array_items(text: str, *, key: str) -> Iterator[Any]:
    """The items of array member `key` of the JSON object `text`, decoded one at a time.

    The whole text is checked: malformed JSON raises ValueError (json.JSONDecodeError), even
    after items were yielded; a missing member, or one that is not an array, NotAnArray.
    """
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        json.loads(text)  # malformed: ValueError; else valid JSON, not an object
        raise NotAnArray(key)
    found = False
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            name, pos = _value(text, pos)
            if not isinstance(name, str):
                raise json.JSONDecodeError("Expecting property name", text, pos)
            pos = _skip(text, _expect(text, _skip(text, pos), ":"))
            if name == key and not found and text.startswith("[", pos):
                found = True
                pos = yield from _items(text, pos + 1)
            else:
                _, pos = _value(text, pos)
            pos = _skip(text, pos)
            if text.startswith("}", pos):
                pos += 1
                break
            pos = _skip(text, _expect(text, pos, ","))
    if _skip(text, pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    if not found:
        raise NotAnArray(key)


def _items(text: str, pos: int) -> Generator[Any, None, int]:
    """The items of an array whose "[" ends before `pos`; returns the position after "]"."""
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        return pos + 1
    while True:
        item, pos = _value(text, pos)
        yield item
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return pos + 1
        pos = _skip(text, _expect(text, pos, ","))


def _value(text: str, pos: int) -> tuple[Any, int]:
    return _DECODER.raw_decode(text, pos)


def _skip(text: str, pos: int) -> int:
    found = _SPACE.match(text, pos)
    return found.end() if found else pos


def _expect(text: str, pos: int, char: str) -> int:
    if not text.startswith(char, pos):
        raise json.JSONDecodeError(f"Expecting '{char}'", text, pos)
    return pos + 1
