"""Request validation for the fake Stripe, driven by the OpenAPI subsets in ../contracts/stripe.

The specs are loaded once at import. Each operation becomes an :class:`Operation` with a compiled
path regex and an object schema for its parameters (query parameters for GET, the form or JSON
body for POST, query parameters plus the body schema for DELETE, since stripe-python sends DELETE
parameters in the query string).

:func:`coerce` walks a value against a schema, converting form strings to the declared types
(integers, booleans, arrays sent as ``a[0]=``/``a[]=``) and raising :class:`ContractError` for what
the real API refuses. Error codes (``param`` always names the offending parameter, Stripe style,
e.g. ``recurring[usage_type]`` or ``items[0][price]``):

- ``parameter_unknown``: a key the schema does not list
- ``parameter_missing``: a required key is absent
- ``parameter_invalid_empty``: ``""`` for a required parameter, or for a number, boolean, enum,
  object or array the schema does not mark ``| ""`` (optional strings may be ``""`` = unset)
- ``parameter_invalid_integer``: not an integer
- ``parameter_invalid_string``: not a string, longer than ``maxLength``, bad decimal/date-time
- ``parameter_invalid_enum``: not one of the enum values
- ``parameter_invalid_boolean`` / ``parameter_invalid_number`` / ``parameter_invalid_array`` /
  ``parameter_invalid_object``: wrong type

With ``strict=False`` only the type conversions are applied (and their failures still raise,
because the handlers cannot work with unconverted values).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

Schema = dict[str, Any]


# The copies shipped inside the package (emulators/contracts/stripe), and nothing else.
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts" / "stripe"
V1_SPEC: dict[str, Any] = json.loads((CONTRACTS_DIR / "stripe-v1-subset.json").read_text("utf-8"))
V2_SPEC: dict[str, Any] = json.loads((CONTRACTS_DIR / "stripe-v2-subset.json").read_text("utf-8"))


class ContractError(Exception):
    """A request the contract refuses: answered with 400 invalid_request_error."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass
class Operation:
    api: str  # "v1" | "v2"
    method: str  # "GET" | "POST" | "DELETE"
    template: str  # "/v1/prices/{price}"
    regex: re.Pattern[str]
    path_params: list[str]
    schema: Schema  # object schema of the parameters
    summary: str = ""
    form: bool = True  # v1 form-encoded (True) or v2 JSON (False)
    extra: dict[str, Any] = field(default_factory=dict)


_EXPAND_SCHEMA: Schema = {"type": "array", "items": {"type": "string", "maxLength": 5000}}


def _build_operations() -> list[Operation]:
    ops: list[Operation] = []
    for api, spec in (("v1", V1_SPEC), ("v2", V2_SPEC)):
        for template, methods in spec["paths"].items():
            names = re.findall(r"{([^}]+)}", template)
            pattern = "^" + re.sub(r"{[^}]+}", "([^/]+)", template) + "$"
            for method, op in methods.items():
                m = method.upper()
                props: dict[str, Schema] = {}
                required: list[str] = []
                for p in op.get("parameters", []):
                    if p.get("in") != "query":
                        continue
                    props[p["name"]] = p.get("schema", {})
                    if p.get("required"):
                        required.append(p["name"])
                content = op.get("requestBody", {}).get("content", {})
                body_schema: Schema | None = None
                for ctype in ("application/x-www-form-urlencoded", "application/json"):
                    if ctype in content:
                        body_schema = content[ctype].get("schema")
                if m != "GET" and body_schema:
                    props.update(body_schema.get("properties", {}))
                    required.extend(body_schema.get("required", []))
                if api == "v1":
                    props.setdefault("expand", _EXPAND_SCHEMA)
                schema: Schema = {
                    "type": "object",
                    "properties": props,
                    "required": sorted(set(required)),
                    "additionalProperties": False,
                }
                ops.append(
                    Operation(
                        api=api,
                        method=m,
                        template=template,
                        regex=re.compile(pattern),
                        path_params=names,
                        schema=schema,
                        summary=op.get("summary", ""),
                        form=api == "v1",
                    )
                )
    return ops


OPERATIONS: list[Operation] = _build_operations()
_STATIC: dict[tuple[str, str], Operation] = {
    (o.method, o.template): o for o in OPERATIONS if not o.path_params
}
_DYNAMIC: list[Operation] = [o for o in OPERATIONS if o.path_params]


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """Find the operation for ``method path``; returns it with the (unquoted) path parameters."""
    op = _STATIC.get((method, path))
    if op is not None:
        return op, {}
    for op in _DYNAMIC:
        if op.method != method:
            continue
        m = op.regex.match(path)
        if m:
            return op, {n: unquote(v) for n, v in zip(op.path_params, m.groups(), strict=True)}
    return None


def path_exists(path: str) -> bool:
    return any(
        (not o.path_params and o.template == path) or (o.path_params and o.regex.match(path))
        for o in OPERATIONS
    )


# --------------------------------------------------------------------------- form decoding

_SEGMENT = re.compile(r"\[([^\]]*)\]")


def parse_form(qs: str) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b]=``, ``a[0][c]=``, ``a[]=``) into nested dicts/lists.

    Indexed arrays stay dicts keyed by the index string; :func:`coerce` turns them into lists
    where the schema says ``array``.
    """
    out: dict[str, Any] = {}
    if not qs:
        return out
    for key, value in parse_qsl(qs, keep_blank_values=True):
        br = key.find("[")
        if br <= 0:
            out[key] = value
            continue
        parts = [key[:br], *_SEGMENT.findall(key[br:])]
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if part != "":
                    raise ContractError(
                        "parameter_invalid_array", f"Invalid array: {key}", key[: key.find("[")]
                    )
                if last:
                    node.append(value)
                else:
                    nxt: list[Any] | dict[str, Any] = [] if parts[i + 1] == "" else {}
                    node.append(nxt)
                    node = nxt
                continue
            if not isinstance(node, dict):
                raise ContractError("parameter_invalid_object", f"Invalid parameter: {key}", key)
            if last:
                node[part] = value
            else:
                want_list = parts[i + 1] == ""
                cur = node.get(part)
                if cur is None or isinstance(cur, str):
                    cur = [] if want_list else {}
                    node[part] = cur
                node = cur
    return out


# --------------------------------------------------------------------------- coercion


def _child(param: str, key: str | int) -> str:
    return f"{param}[{key}]" if param else str(key)


def _accepts_empty(schema: Schema) -> bool:
    if "" in schema.get("enum", ()):
        return True
    return any(_accepts_empty(alt) for alt in schema.get("anyOf", ()))


def _kind(schema: Schema) -> str:
    return str(schema.get("type", ""))


def coerce(value: Any, schema: Schema, param: str, *, form: bool, strict: bool) -> Any:
    """Check ``value`` against ``schema`` (see module docstring); return the converted value."""
    if "anyOf" in schema or "oneOf" in schema:
        alts: list[Schema] = schema.get("anyOf") or schema.get("oneOf") or []
        errors: list[tuple[Schema, ContractError]] = []
        for alt in alts:
            try:
                return coerce(value, alt, param, form=form, strict=True)
            except ContractError as e:
                errors.append((alt, e))
        if not strict:
            for alt in alts:
                try:
                    return coerce(value, alt, param, form=form, strict=False)
                except ContractError:
                    pass
        if form and value == "":
            raise _empty(param)
        structured = isinstance(value, dict | list)
        for alt, err in errors:
            if (_kind(alt) in ("object", "array")) == structured and "" not in alt.get("enum", ()):
                raise err
        raise errors[0][1]

    if form and value == "" and strict and not _accepts_empty(schema):
        # Stripe reads "" as "unset": fine for an optional free-text string (the spec does not
        # mark every clearable string with `| ""`), refused for numbers, booleans, enums, objects.
        if _kind(schema) != "string" or "enum" in schema:
            raise _empty(param)

    kind = _kind(schema)
    if kind == "string":
        return _coerce_string(value, schema, param, form=form, strict=strict)
    if kind == "integer":
        if form and isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                raise ContractError(
                    "parameter_invalid_integer", f"Invalid integer: {value}", param
                ) from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ContractError("parameter_invalid_integer", f"Invalid integer: {value!r}", param)
    if kind == "number":
        if form and isinstance(value, str):
            try:
                d = Decimal(value)
            except InvalidOperation:
                d = Decimal("NaN")
            if not d.is_finite():
                raise ContractError("parameter_invalid_number", f"Invalid number: {value}", param)
            return float(d)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise ContractError("parameter_invalid_number", f"Invalid number: {value!r}", param)
    if kind == "boolean":
        if form and isinstance(value, str):
            if value == "true":
                return True
            if value == "false":
                return False
        elif isinstance(value, bool):
            return value
        raise ContractError(
            "parameter_invalid_boolean",
            f"Invalid boolean: {value!r}; must be one of true or false",
            param,
        )
    if kind == "array":
        return _coerce_array(value, schema, param, form=form, strict=strict)
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        return _coerce_object(value, schema, param, form=form, strict=strict)
    if "enum" in schema and strict and value not in schema["enum"]:
        raise _enum(value, schema["enum"], param)
    return value


def _empty(param: str) -> ContractError:
    return ContractError(
        "parameter_invalid_empty",
        f"You passed an empty string for '{param}'. We assume empty values are an attempt to "
        f"unset a parameter; however '{param}' cannot be unset. You should remove '{param}' "
        "from your request or supply a non-empty value.",
        param,
    )


def _enum(value: Any, allowed: list[Any], param: str) -> ContractError:
    shown = [repr(a) if a == "" else str(a) for a in allowed]
    choices = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f", or {shown[-1]}"
    return ContractError(
        "parameter_invalid_enum",
        f"Invalid {param.rsplit('[', 1)[-1].rstrip(']')}: must be one of {choices}",
        param,
    )


def _coerce_string(value: Any, schema: Schema, param: str, *, form: bool, strict: bool) -> Any:
    if not isinstance(value, str):
        raise ContractError("parameter_invalid_string", f"Invalid string: {value!r}", param)
    if not strict:
        return value
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        raise _enum(value, enum, param)
    max_len = schema.get("maxLength")
    if max_len is not None and len(value) > max_len:
        raise ContractError(
            "parameter_invalid_string",
            f"Invalid string: {value[:20]}...; must be at most {max_len} characters",
            param,
        )
    fmt = schema.get("format")
    if fmt == "decimal" and value != "":
        try:
            ok = Decimal(value).is_finite()
        except InvalidOperation:
            ok = False
        if not ok:
            raise ContractError("parameter_invalid_string", f"Invalid decimal: {value}", param)
    elif fmt == "date-time":
        if parse_rfc3339(value) is None:
            raise ContractError(
                "parameter_invalid_string",
                f"Invalid timestamp: {value!r}; must be an RFC 3339 date-time",
                param,
            )
    return value


def _coerce_array(value: Any, schema: Schema, param: str, *, form: bool, strict: bool) -> Any:
    items: list[Any]
    if isinstance(value, list):
        items = value
    elif form and isinstance(value, dict) and all(k.isdigit() for k in value):
        items = [value[k] for k in sorted(value, key=int)]
    else:
        raise ContractError("parameter_invalid_array", f"Invalid array: {param}", param)
    item_schema = schema.get("items", {})
    return [
        coerce(v, item_schema, _child(param, i), form=form, strict=strict)
        for i, v in enumerate(items)
    ]


def _coerce_object(value: Any, schema: Schema, param: str, *, form: bool, strict: bool) -> Any:
    if not isinstance(value, dict):
        raise ContractError("parameter_invalid_object", f"Invalid object: {param}", param)
    props: dict[str, Schema] | None = schema.get("properties")
    addl = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, v in value.items():
        sub = props.get(key) if props is not None else None
        child = _child(param, key)
        if sub is None:
            if isinstance(addl, dict):
                sub = addl
            elif props is None and addl is None:  # free-form object
                out[key] = v
                continue
            elif strict:
                raise ContractError(
                    "parameter_unknown", f"Received unknown parameter: {child}", child
                )
            else:
                out[key] = v
                continue
        if isinstance(addl, dict) and sub is addl and form and v == "":
            out[key] = v  # metadata[key]= unsets the key
            continue
        out[key] = coerce(v, sub, child, form=form, strict=strict)
    if strict:
        for req in schema.get("required", ()):
            if req not in value:
                child = _child(param, req)
                raise ContractError("parameter_missing", f"Missing required param: {child}.", child)
            if (
                form
                and value[req] == ""
                and not _accepts_empty(props.get(req, {}) if props else {})
            ):
                raise _empty(_child(param, req))
    return out


def validate(
    op: Operation, params: dict[str, Any], *, strict: bool, reject_unknown: bool = False
) -> dict[str, Any]:
    """Validate the request parameters of ``op``; return them converted to their types.

    ``reject_unknown`` keeps the unknown-parameter check even when ``strict`` is off (used for the
    update operations whose refusal of immutable fields is a business rule, not just the contract).
    """
    if reject_unknown and not strict:
        props = op.schema["properties"]
        for key in params:
            if key not in props:
                raise ContractError("parameter_unknown", f"Received unknown parameter: {key}", key)
    result = coerce(params, op.schema, "", form=op.form, strict=strict)
    assert isinstance(result, dict)
    return result


def parse_rfc3339(value: str) -> datetime | None:
    """Parse an RFC 3339 date-time (``Z`` or an offset required); None if it is not one."""
    if len(value) < 20 or value[10] not in "Tt":
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt
