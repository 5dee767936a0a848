"""array_items decodes one array member of a JSON object item by item, exactly as json.loads
would, and refuses what json.loads refuses."""

import json

import pytest

from billing.integrations.json_stream import NotAnArray, array_items


def items(text: str) -> list[object]:
    return list(array_items(text, key="data"))


@pytest.mark.parametrize(
    "text",
    [
        '{"data":[]}',
        ' { "a" : 1 , "data" : [ 1 , {"x":[1,2]} , "s" ] , "b":{"data":2} } ',
        '{"data":[{"value":1.5e3,"subject":"c\\u00e9"}],"z":null}\n',
    ],
)
def test_items_are_what_json_loads_reads(text: str) -> None:
    assert items(text) == json.loads(text)["data"]


@pytest.mark.parametrize(
    "text",
    ['{"data":[1,]}', '{"data":[1] ', '{"data":[1]} x', '{"data":[1]', "", '{"a":1,}', "[1"],
)
def test_malformed_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        items(text)


def test_malformed_json_after_the_array_is_refused_after_its_items() -> None:
    read = array_items('{"data":[1,2],"b":}', key="data")
    assert [next(read), next(read)] == [1, 2]
    with pytest.raises(ValueError):
        next(read)


@pytest.mark.parametrize("text", ["{}", '{"data":1}', "[]", '{"datum":[1]}', '"x"'])
def test_a_missing_array_is_told_apart(text: str) -> None:
    with pytest.raises(NotAnArray):
        items(text)
