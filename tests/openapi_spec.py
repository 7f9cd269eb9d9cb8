"""Checking JSON against the published OpenAPI files (a test helper, not a test module).

The files live in ``../shared/reference/canton/api/`` and are read where they are (never copied):
the JSON Ledger API v2 (``ledger-api-3.4.12-openapi.yaml``) and the two Registry API files of the
token standard (``splice-0.6.1-transfer-instruction-v1.yaml``,
``splice-0.6.1-token-metadata-v1.yaml``).
Each is parsed once per test session. A missing file skips the test with a clear message (fails
under ``CI=true``), as :func:`tests.conftest.reference_path` does.

:func:`check_schema` validates an instance against a component schema (by name or ``$ref``);
:func:`check_response` against what the spec documents for a path, method and status — the
entry for that status with the body's content type, else the ``default`` entry (Canton answers
semantic errors as ``JsCantonError`` with statuses the spec only covers under ``default``).
Validation uses :class:`openapi_schema_validator.OAS30Validator` with a ``referencing`` registry
holding the whole document, so ``#/components/schemas/...`` references resolve.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.conftest import reference_path

LEDGER_API_FILE = "ledger-api-3.4.12-openapi.yaml"
TRANSFER_INSTRUCTION_FILE = "splice-0.6.1-transfer-instruction-v1.yaml"
TOKEN_METADATA_FILE = "splice-0.6.1-token-metadata-v1.yaml"


@dataclass
class Spec:
    """One parsed OpenAPI document with its validators (built on first use)."""

    name: str
    document: Mapping[str, Any]
    _registry: Registry[Any] = field(init=False, repr=False)
    _validators: dict[int, OAS30Validator] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        resource = Resource.from_contents(self.document, default_specification=DRAFT4)
        self._registry = Registry().with_resource(self.uri, resource)

    @property
    def uri(self) -> str:
        return f"urn:sluice-test:{self.name}"

    def validator(self, schema: Mapping[str, Any]) -> OAS30Validator:
        """A validator for a schema found in this document (its refs resolve in the document)."""
        key = id(schema)  # schemas are parts of the cached document, so their ids are stable
        found = self._validators.get(key)
        if found is None:
            pointer = _pointer_of(self, schema)
            found = OAS30Validator({"$ref": f"{self.uri}{pointer}"}, registry=self._registry)
            self._validators[key] = found
        return found

    def component(self, name_or_ref: str) -> Mapping[str, Any]:
        name = name_or_ref.rsplit("/", 1)[-1]
        schemas = self.document.get("components", {}).get("schemas", {})
        if name not in schemas:
            raise KeyError(f"{self.name} has no component schema {name!r}")
        schema: Mapping[str, Any] = schemas[name]
        return schema


def _pointer_of(spec: Spec, schema: Mapping[str, Any]) -> str:
    """The JSON pointer of ``schema`` inside ``spec.document`` (found by identity)."""
    stack: list[tuple[str, Any]] = [("#", spec.document)]
    while stack:
        pointer, node = stack.pop()
        if node is schema:
            return pointer
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(value, Mapping | list):
                    escaped = str(key).replace("~", "~0").replace("/", "~1")
                    stack.append((f"{pointer}/{escaped}", value))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, Mapping | list):
                    stack.append((f"{pointer}/{index}", value))
    raise KeyError("schema is not part of the document")


# What real Canton 3.4 nodes send differs from the 3.4.12 file in a few places the file itself
# warns about ("fields marked as required in the spec are in fact optional"): the recorded
# transactions in ``../shared/reference/canton/fixtures/guide-*.json`` have no ``acsDelta`` /
# ``representativePackageId``, an ``interfaceId`` of null on exercises and a null ``tracestate``.
# The embedded ledger reproduces that data, so the checks accept exactly these deviations and
# nothing else.
OBSERVED_OPTIONAL: Mapping[str, tuple[str, ...]] = {
    "CreatedEvent": ("acsDelta", "representativePackageId"),
    "ExercisedEvent": ("acsDelta",),
}
OBSERVED_NULLABLE: Mapping[str, tuple[str, ...]] = {
    "ExercisedEvent": ("interfaceId",),
    "TraceContext": ("tracestate",),
}


def _relax(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, fields in OBSERVED_OPTIONAL.items():
        schema = schemas[name]
        schema["required"] = [f for f in schema.get("required", []) if f not in fields]
    for name, fields in OBSERVED_NULLABLE.items():
        for field_name in fields:
            schemas[name]["properties"][field_name]["nullable"] = True


@functools.cache
def _load(file_name: str) -> Spec:
    path = reference_path("canton", "api", file_name)
    with path.open("rb") as handle:
        document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if file_name == LEDGER_API_FILE:
        _relax(document)
    return Spec(file_name, document)


def ledger_api() -> Spec:
    return _load(LEDGER_API_FILE)


def transfer_instruction_api() -> Spec:
    return _load(TRANSFER_INSTRUCTION_FILE)


def token_metadata_api() -> Spec:
    return _load(TOKEN_METADATA_FILE)


def check_schema(spec: Spec, schema_name_or_ref: str, instance: object) -> None:
    """Fail the test (with the most relevant validation error) unless ``instance`` matches the
    component schema ``schema_name_or_ref`` (``"JsCommands"`` or
    ``"#/components/schemas/JsCommands"``)."""
    _check(spec, spec.component(schema_name_or_ref), instance, schema_name_or_ref)


def check_response(
    spec: Spec,
    path: str,
    method: str,
    status: int,
    body: object,
    *,
    content_type: str | None = None,
) -> None:
    """Fail the test unless ``body`` is what ``spec`` documents for ``method path`` answering
    ``status``. ``content_type`` defaults from the body: text for ``str``, else JSON."""
    operations = spec.document.get("paths", {}).get(path)
    if operations is None:
        raise AssertionError(f"{spec.name} documents no path {path}")
    operation = operations.get(method.lower())
    if operation is None:
        raise AssertionError(f"{spec.name} documents no {method.upper()} {path}")
    media = content_type or ("text/plain" if isinstance(body, str) else "application/json")
    responses = operation.get("responses", {})
    for key in (str(status), "default"):
        response = responses.get(key)
        if response is None:
            continue
        response = _resolve(spec, response)
        content = response.get("content", {})
        if media in content:
            _check(spec, content[media]["schema"], body, f"{method.upper()} {path} {status}")
            return
    documented = ", ".join(
        f"{key}: {sorted(_resolve(spec, r).get('content', {}))}" for key, r in responses.items()
    )
    raise AssertionError(
        f"{spec.name}: {method.upper()} {path} documents no {media} answer for {status} "
        f"({documented})"
    )


def _resolve(spec: Spec, value: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = value.get("$ref")
    if not isinstance(ref, str):
        return value
    node: Any = spec.document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    resolved: Mapping[str, Any] = node
    return resolved


def _check(spec: Spec, schema: Mapping[str, Any], instance: object, what: str) -> None:
    validator = spec.validator(schema)
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        # Inside a oneOf / anyOf, name the problem in the branch that came closest.
        while error.context:
            error = max(error.context, key=lambda e: len(e.absolute_path))
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise AssertionError(f"{spec.name}: not a valid {what} at {where}: {error.message[:500]}")
