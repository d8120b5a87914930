"""The job spec: parsing (YAML or JSON) and validation with field-level errors.

```yaml
name: tiny-lm
project: default
entrypoint: [python, -m, workers.recipes.causal_lm]   # or [python, train.py]
args: [--max-steps, "200"]
env: {WANDB_MODE: disabled}
resources: {nodes: 1, gpus_per_node: 2}   # gpus_per_node: 0 -> CPU processes (gloo)
priority: normal                          # low | normal | high
max_restarts: 3
max_runtime: 2h
checkpoint: {keep: 3}
environment: {pip: [datasets, accelerate]}   # or {requirements: requirements.txt}, {image: ...}
```
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from drf_spectacular.utils import extend_schema_field
from packaging.requirements import InvalidRequirement, Requirement
from rest_framework import serializers

from controlplane.tenancy import secrets
from controlplane.tenancy.api.common import StrictSerializer
from jobs import expansion
from jobs.states import PRIORITY_BY_NAME

MAX_NODES = 64
MAX_GPUS_PER_NODE = 16
MAX_PROCS_PER_NODE = 128
MAX_RUNTIME = 30 * 24 * 3600
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables the launcher sets; a job may not override them.
RESERVED_ENV = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "TORCHELASTIC_RUN_ID",
        "PYTHONPATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "VIRTUAL_ENV",
        # The network interfaces of the rendezvous and collectives are the worker's choice.
        "GLOO_SOCKET_IFNAME",
        "NCCL_SOCKET_IFNAME",
        "TP_SOCKET_IFNAME",
        "NCCL_IB_HCA",
        "PYTHONHOME",
        "PYTHONSTARTUP",
    }
)
RESERVED_ENV_PREFIXES = ("CP_", "TORCHELASTIC_")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@+-]{0,254}$", re.IGNORECASE)
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_spec_text(text: str) -> Any:
    """A spec document (YAML, of which JSON is a subset) to Python data."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise serializers.ValidationError({"spec": [f"Not valid YAML or JSON{where}."]}) from None


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "maxLength": 32768},
            {
                "type": "object",
                "properties": {"secret": {"type": "string", "pattern": secrets.NAME.pattern}},
                "required": ["secret"],
                "additionalProperties": False,
            },
        ]
    }
)
class EnvValueField(serializers.Field):
    """A variable's value: a string, or ``{secret: NAME}``, a project secret given to the
    job's processes (and nowhere else) when they start."""

    default_error_messages = {
        "invalid": "A string, or {{secret: NAME}} for one of the project's secrets.",
        "long": "At most 32768 characters.",
        "name": "A secret name: letters, digits, '.', '_' or '-', at most 63.",
    }

    def to_internal_value(self, data: Any) -> str | dict:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, int | float):
            data = str(data)
        if isinstance(data, str):
            if len(data) > 32768:
                self.fail("long")
            return data
        if isinstance(data, dict) and list(data) == ["secret"]:
            name = data["secret"]
            if not isinstance(name, str) or not secrets.NAME.match(name):
                self.fail("name")
            return {"secret": name}
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


def secret_refs(env: dict) -> set[str]:
    """The names of the project secrets a spec's env refers to."""
    return {v["secret"] for v in env.values() if isinstance(v, dict)}


class RequirementError(ValueError):
    pass


def check_requirement(text: str) -> str:
    """One PEP 508 requirement from an index (``name[extras] specifiers ; markers``), as
    written; no options, URLs or local paths (they could reach anything on the host)."""
    text = text.strip()
    if not text:
        raise RequirementError("an empty requirement")
    if len(text) > 300:
        raise RequirementError(f"{text[:40]}...: longer than 300 characters")
    if text.startswith("-"):
        raise RequirementError(
            f"{text!r}: pip options (-e, -r, --index-url, ...) are not accepted; give "
            "package requirements such as 'datasets>=2.19'"
        )
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise RequirementError(f"{text!r} is not a valid requirement: {exc}") from None
    if req.url:
        raise RequirementError(f"{text!r}: URL and path requirements are not accepted")
    return text


class RequirementField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return check_requirement(value)
        except RequirementError as exc:
            raise serializers.ValidationError(str(exc)) from None


class EnvironmentSerializer(StrictSerializer):
    """Where the job's processes run: a uv-built environment or a container image."""

    pip = serializers.ListField(
        child=RequirementField(max_length=300),
        max_length=200,
        required=False,
        help_text="Packages to install (PEP 508), layered on the worker's environment.",
    )
    requirements = serializers.RegexField(
        r"^(?!/)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}$",
        required=False,
        error_messages={"invalid": "A relative path of a file in the uploaded code."},
        help_text="A requirements file in the uploaded code.",
    )
    python = serializers.RegexField(
        r"^3\.\d{1,2}$",
        required=False,
        error_messages={"invalid": "A Python version such as '3.11'."},
    )
    inherit = serializers.BooleanField(
        default=True, help_text="See the worker's packages (torch...) under the new ones."
    )
    image = serializers.RegexField(
        IMAGE_REF,
        required=False,
        error_messages={"invalid": "A container image reference such as 'pytorch/pytorch:2.5'."},
    )

    def validate(self, attrs: dict) -> dict:
        if attrs.get("image") and (attrs.get("pip") or attrs.get("requirements")):
            raise serializers.ValidationError(
                {"image": ["With an image, install packages into the image, not with pip."]}
            )
        if attrs.get("image") and "python" in attrs:
            raise serializers.ValidationError({"python": ["The image decides the Python."]})
        return attrs


class ArgvField(serializers.ListField):
    """An argv list of strings; a single string is refused (no shell parsing, ever)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("child", serializers.CharField(max_length=4096, trim_whitespace=False))
        kwargs.setdefault("max_length", 1024)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            raise serializers.ValidationError(
                "Give an argv list such as [python, train.py, --lr, '0.1'], not a shell string."
            )
        if isinstance(data, list):
            data = [str(item) if isinstance(item, int | float) else item for item in data]
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_RUNTIME},
            {"type": "string", "pattern": r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
        ],
        "nullable": True,
    }
)
class DurationField(serializers.Field):
    """Seconds, from a number or a string such as ``90s``, ``30m``, ``2h``, ``1d12h``."""

    default_error_messages = {
        "invalid": "Use seconds or a duration such as 90s, 30m, 2h or 1h30m.",
        "range": f"Must be between 1 second and {MAX_RUNTIME // 86400} days.",
    }

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, int):
            seconds = data
        elif isinstance(data, str) and (match := _DURATION.match(data.strip().lower())):
            if not any(match.groups()):
                self.fail("invalid")
            d, h, m, s = (int(x or 0) for x in match.groups())
            seconds = ((d * 24 + h) * 60 + m) * 60 + s
        else:
            self.fail("invalid")
        if not 1 <= seconds <= MAX_RUNTIME:
            self.fail("range")
        return seconds

    def to_representation(self, value: int) -> int:
        return value


class ResourcesSerializer(StrictSerializer):
    nodes = serializers.IntegerField(min_value=1, max_value=MAX_NODES, default=1)
    gpus_per_node = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_NODE, default=0)
    procs_per_node = serializers.IntegerField(
        min_value=1,
        max_value=MAX_PROCS_PER_NODE,
        required=False,
        help_text="Processes per node: one per GPU, or (CPU jobs) 1 unless set.",
    )

    def validate(self, attrs: dict) -> dict:
        gpus = attrs.get("gpus_per_node", 0)
        procs = attrs.get("procs_per_node")
        if gpus and procs is not None and procs != gpus:
            raise serializers.ValidationError(
                {
                    "procs_per_node": [
                        f"With GPUs it is one process per GPU: leave it out or {gpus}."
                    ]
                }
            )
        attrs["procs_per_node"] = gpus or procs or 1
        return attrs


class CheckpointPolicySerializer(StrictSerializer):
    keep = serializers.IntegerField(min_value=1, max_value=100, default=3)


TAG = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,31}$"
MAX_TAGS = 16
MAX_OUTPUTS = 16
OUTPUT_PATH = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")


def encode_tags(tags: list[str]) -> str:
    """Tags as stored: ``,a,b,`` (a ``,a,`` substring finds one on every database)."""
    return f",{','.join(tags)}," if tags else ""


def decode_tags(stored: str) -> list[str]:
    return [t for t in stored.split(",") if t]


class JobSpecSerializer(StrictSerializer):
    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$",
        max_length=100,
        error_messages={"invalid": "Letters, digits, '.', '_', '-' or spaces; at most 100."},
    )
    project = serializers.CharField(max_length=63, default="default")
    entrypoint = ArgvField(min_length=1)
    args = ArgvField(default=list)
    env = serializers.DictField(child=EnvValueField(), default=dict)
    resources = ResourcesSerializer(default=lambda: {"nodes": 1, "gpus_per_node": 0})
    priority = serializers.ChoiceField(choices=list(PRIORITY_BY_NAME), default="normal")
    max_restarts = serializers.IntegerField(min_value=0, max_value=100, default=3)
    max_runtime = DurationField(required=False, allow_null=True, default=None)
    checkpoint = CheckpointPolicySerializer(default=lambda: {"keep": 3})
    environment = EnvironmentSerializer(required=False)
    code_path = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=False,
        help_text="A server-side code directory under one of CP_JOB_CODE_DIRS.",
    )
    tags = serializers.ListField(
        child=serializers.RegexField(
            TAG,
            max_length=32,
            error_messages={"invalid": "Letters, digits, '.', '_', ':' or '-'; at most 32."},
        ),
        max_length=MAX_TAGS,
        default=list,
        help_text="Labels to find and group jobs by (the jobs list filters on them).",
    )

    outputs = serializers.ListField(
        child=serializers.CharField(max_length=255),
        max_length=MAX_OUTPUTS,
        required=False,
        help_text="Directories of the working directory kept as the job's outputs when a "
        "node ends (default: outputs/), besides what it writes to ${CP_OUTPUT_DIR}.",
    )

    def validate_env(self, env: dict[str, str]) -> dict[str, str]:
        if len(env) > 256:
            raise serializers.ValidationError("At most 256 variables.")
        for name, value in env.items():
            if not ENV_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a valid variable name.")
            if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
                raise serializers.ValidationError(
                    f"{name} is set by the launcher; a job cannot override it."
                )
            if isinstance(value, str) and (why := expansion.problem(value)):
                raise serializers.ValidationError(f"{name}: {why}")
        return env

    def validate_args(self, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if why := expansion.problem(arg):
                raise serializers.ValidationError(f"argument {i}: {why}")
        return args

    def validate_outputs(self, outputs: list[str]) -> list[str]:
        for path in outputs:
            parts = path.strip("/").split("/")
            if not OUTPUT_PATH.match(path) or any(p in {"", ".", ".."} for p in parts):
                raise serializers.ValidationError(
                    f"{path!r}: a directory relative to the working directory "
                    "(letters, digits, '.', '_', '-', '/'; no '..')."
                )
        return list(dict.fromkeys(p.strip("/") for p in outputs))

    def validate_tags(self, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))  # in order, once each

    def validate(self, attrs: dict) -> dict:
        if isinstance(attrs.get("resources"), dict) and "procs_per_node" not in attrs["resources"]:
            attrs["resources"] = ResourcesSerializer().run_validation(attrs["resources"])
        return attrs


def normalize(data: dict) -> dict:
    """The validated spec as plain JSON-able data (what is stored and shown)."""
    return json.loads(json.dumps(data))
