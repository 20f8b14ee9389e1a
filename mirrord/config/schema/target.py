"""``target``: what to impersonate, as a path string or one of mirrord's object forms."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from mirrord.config.schema.base import Section, quoted

# Object forms of a target path, e.g. {"pod": "x", "container": "c"} -> "pod/x/container/c".
_TARGET_KINDS = {
    "deployment": "deployment",
    "pod": "pod",
    "rollout": "rollout",
    "job": "job",
    "cron_job": "cronjob",
    "stateful_set": "statefulset",
    "service": "service",
    "replica_set": "replicaset",
}


def _target_object_to_path(obj: dict[str, Any]) -> str:
    kinds = [k for k in obj if k in _TARGET_KINDS or k == "labels"]
    unknown = [k for k in obj if k not in _TARGET_KINDS and k not in ("labels", "container")]
    if unknown or len(kinds) != 1:
        raise PydanticCustomError(
            "target",
            "expected a target path string or an object with exactly one of "
            "pod, deployment, rollout, job, cron_job, stateful_set, service, replica_set, "
            "labels (and optionally container); got keys {keys}",
            {"keys": ", ".join(map(quoted, obj)) or "none"},
        )
    kind = kinds[0]
    container = obj.get("container")
    if container is not None and not isinstance(container, str):
        raise PydanticCustomError("target", "container: expected a string")
    value = obj[kind]
    if kind == "labels":
        if not isinstance(value, dict) or not value:
            raise PydanticCustomError("target", "labels: expected a non-empty object")
        if not all(isinstance(v, str) for v in value.values()):
            raise PydanticCustomError("target", "labels: expected string values")
        path = "label/" + ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    else:
        if not isinstance(value, str) or not value:
            raise PydanticCustomError("target", "{kind}: expected a name", {"kind": kind})
        path = f"{_TARGET_KINDS[kind]}/{value}"
    return path if container is None else f"{path}/container/{container}"


def _target_path_before(value: Any) -> Any:
    return _target_object_to_path(value) if isinstance(value, dict) else value


def _check_target_path(value: str) -> str:
    # Target types are not restricted here: this project adds its own (pid/, netns/) to
    # mirrord's; the shape "type/name[/...]" is what all of them share.
    if value == "targetless":
        return value
    kind, sep, rest = value.partition("/")
    if not kind or not sep or not rest.split("/", 1)[0]:
        raise PydanticCustomError(
            "target",
            'invalid target {target}: expected "targetless" or "<type>/<name>" '
            '(e.g. "pod/my-pod", "deployment/api/container/main", "pid/1234")',
            {"target": quoted(value)},
        )
    return value


def _kind_schema(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {kind: value, "container": {"type": ["string", "null"]}},
        "required": [kind],
        "additionalProperties": False,
    }


_TARGET_PATH_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": '"targetless" or "<type>/<name>[/container/<c>]"'},
        *(_kind_schema(kind, {"type": "string"}) for kind in _TARGET_KINDS),
        _kind_schema("labels", {"type": "object", "additionalProperties": {"type": "string"}}),
    ]
}

TargetPath = Annotated[
    str,
    BeforeValidator(_target_path_before),
    AfterValidator(_check_target_path),
    WithJsonSchema(_TARGET_PATH_SCHEMA),
]


class TargetConfig(Section):
    """What to impersonate: ``path`` (``"pod/x"``, ``"targetless"``, ...) and its namespace."""

    path: TargetPath | None = None
    namespace: str | None = None


class TargetSchema:
    """JSON-schema marker: ``target`` may also be a path string or a target-kind object."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [*_TARGET_PATH_SCHEMA["anyOf"], handler(core_schema)]}


def target_before(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"path": value}
    if isinstance(value, dict):
        # {"pod": "x"} at the top level is a path object, not {path, namespace}.
        if value and not set(value) <= {"path", "namespace"}:
            return {"path": value}
        return value
    raise PydanticCustomError("target", "expected a target path string or an object")
