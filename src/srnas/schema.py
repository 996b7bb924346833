"""JSON schema for the configuration, generated from the typed dataclasses (so the two cannot drift).

``workflow/schemas/config.schema.yaml`` is this output, committed; a test checks it is current.
Snakemake validates its merged config with it: every key is required and no other is allowed, and the schema
carries no defaults (the values live in ``params.yaml`` alone); the dataclasses then add the semantic checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from srnas.settings import Settings

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _type_schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        schema: dict[str, Any] = {"anyOf": options}
        if type(None) in typing.get_args(annotation):
            schema["anyOf"].append({"type": "null"})
        return schema
    if origin is tuple:
        return {"type": "array", "items": _type_schema(typing.get_args(annotation)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(typing.get_args(annotation)[1])}
    if dataclasses.is_dataclass(annotation):
        return dataclass_schema(annotation)  # type: ignore[arg-type]
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    raise TypeError(f"no JSON schema for {annotation!r}")


def dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        if "enum" in f.metadata:
            target = prop["items"] if prop.get("type") == "array" else prop
            target["enum"] = list(f.metadata["enum"])
        if f.metadata.get("help"):
            prop["description"] = f.metadata["help"]
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": list(properties),
                              "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def settings_schema() -> dict[str, Any]:
    schema = dataclass_schema(Settings)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "srnas configuration (params.yaml)", **schema}
