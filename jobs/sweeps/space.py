"""A sweep's search, validated: the parameters' space, the order its trials are drawn in,
and the rungs of its early stopping (asynchronous successive halving, ASHA).

Pure functions of the validated search: trial ``n`` always gets the same hyperparameters
(grid: the n-th point of the product, the last parameter varying fastest; random: a
generator seeded by the sweep's seed and ``n``), so a sweep whose controller is
interrupted draws the same trials when it goes on.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

from rest_framework import serializers

from controlplane.tenancy.api.common import StrictSerializer

MAX_TRIALS = 10_000
MAX_CONCURRENT = 1_000
MAX_PARAMETERS = 32
MAX_VALUES = 1_000
PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: ``${hp.NAME}`` in the job's args or env values: where a hyperparameter goes.
REFERENCE = re.compile(r"\$\{hp\.([A-Za-z][A-Za-z0-9_-]{0,63})\}")

Value = bool | int | float | str


class AshaSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["asha"], default="asha")
    min_steps = serializers.IntegerField(
        min_value=1, help_text="The first rung: a trial is judged at its first report here."
    )
    max_steps = serializers.IntegerField(
        min_value=2, help_text="The steps a trial that is never stopped runs (no rung past it)."
    )
    reduction_factor = serializers.IntegerField(
        min_value=2, max_value=16, default=3, help_text="Keep the best 1/eta at each rung."
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["max_steps"] <= attrs["min_steps"]:
            raise serializers.ValidationError(
                {"max_steps": "Must be more than min_steps (the first rung)."}
            )
        return attrs


class SearchSerializer(StrictSerializer):
    """What a sweep searches, beside its base job spec."""

    method = serializers.ChoiceField(choices=["grid", "random"])
    parameters = serializers.DictField(
        help_text="name: {values: [...]} | {min, max, log?, type?: int|float} | a constant"
    )
    metric = serializers.CharField(max_length=100, help_text="A metric the trials report.")
    goal = serializers.ChoiceField(choices=["minimize", "maximize"], default="minimize")
    max_trials = serializers.IntegerField(min_value=1, max_value=MAX_TRIALS, required=False)
    max_concurrent = serializers.IntegerField(min_value=1, max_value=MAX_CONCURRENT, default=2)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    early_stopping = AshaSerializer(required=False, allow_null=True, default=None)

    def validate_parameters(self, parameters: dict) -> dict:
        if not parameters:
            raise serializers.ValidationError("Name at least one hyperparameter.")
        if len(parameters) > MAX_PARAMETERS:
            raise serializers.ValidationError(f"At most {MAX_PARAMETERS} hyperparameters.")
        return {name: _parameter(name, spec) for name, spec in parameters.items()}

    def validate(self, attrs: dict) -> dict:
        params = attrs["parameters"]
        if attrs["method"] == "grid":
            ranged = [n for n, p in params.items() if "values" not in p]
            if ranged:
                raise serializers.ValidationError(
                    {"parameters": f"A grid needs a list of values for {', '.join(ranged)} "
                     "(a range is for method: random)."}
                )  # fmt: skip
            size = math.prod(len(p["values"]) for p in params.values())
            if size > MAX_TRIALS and "max_trials" not in attrs:
                raise serializers.ValidationError(
                    {"parameters": f"The grid has {size} points; the limit is {MAX_TRIALS} "
                     "(set max_trials to run the first ones)."}
                )  # fmt: skip
        elif "max_trials" not in attrs:
            raise serializers.ValidationError(
                {"max_trials": "A random search needs max_trials (how many to draw)."}
            )
        return attrs


def _number(name: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise serializers.ValidationError(f"{name}: {what} must be a finite number.")
    return value


def _parameter(name: str, spec: Any) -> dict:
    if not isinstance(name, str) or not PARAM_NAME.match(name):
        raise serializers.ValidationError(
            f"{name!r}: a hyperparameter name is a letter then letters, digits, '_' or '-'."
        )
    if isinstance(spec, list):
        spec = {"values": spec}
    elif not isinstance(spec, dict):
        spec = {"values": [spec]}  # a constant
    unknown = set(spec) - {"values", "min", "max", "log", "type"}
    if unknown:
        raise serializers.ValidationError(
            f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            "use values, or min/max with log and type."
        )
    if "values" in spec:
        if set(spec) != {"values"}:
            raise serializers.ValidationError(f"{name}: give values, or min/max, not both.")
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise serializers.ValidationError(f"{name}: values must be a non-empty list.")
        if len(values) > MAX_VALUES:
            raise serializers.ValidationError(f"{name}: at most {MAX_VALUES} values.")
        for v in values:
            ok = isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v))
            if not ok or (isinstance(v, str) and (len(v) > 200 or "\x00" in v)):
                raise serializers.ValidationError(
                    f"{name}: a value is a number, true/false or a string of at most 200 "
                    f"characters, not {v!r}."
                )
        return {"values": values}
    if "min" not in spec or "max" not in spec:
        raise serializers.ValidationError(f"{name}: a range needs both min and max.")
    low, high = _number(name, "min", spec["min"]), _number(name, "max", spec["max"])
    if low >= high:
        raise serializers.ValidationError(f"{name}: min must be less than max.")
    kind = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise serializers.ValidationError(f"{name}: type is int or float.")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise serializers.ValidationError(f"{name}: log is true or false.")
    if log and low <= 0:
        raise serializers.ValidationError(f"{name}: a log range needs min > 0.")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise serializers.ValidationError(f"{name}: an int range needs whole min and max.")
    return {"min": low, "max": high, "log": log, "type": kind}


def trial_count(search: dict) -> int:
    """How many trials the sweep runs in all."""
    if search["method"] == "grid":
        size = math.prod(len(p["values"]) for p in search["parameters"].values())
        return min(size, search.get("max_trials") or size)
    return search["max_trials"]


def draw(search: dict, number: int) -> dict[str, Value]:
    """The hyperparameters of trial ``number`` (0-based)."""
    params = search["parameters"]
    if search["method"] == "grid":
        sizes = [len(p["values"]) for p in params.values()]
        point, rest = [], number
        for size in reversed(sizes):
            rest, i = divmod(rest, size)
            point.append(i)
        point.reverse()
        return {n: p["values"][i] for (n, p), i in zip(params.items(), point, strict=True)}
    rng = random.Random(f"{search['seed']}:{number}")  # noqa: S311 (a search, not a secret)
    drawn: dict[str, Value] = {}
    for name, p in params.items():
        if "values" in p:
            drawn[name] = rng.choice(p["values"])
            continue
        low, high = p["min"], p["max"]
        if p["type"] == "int":
            if p["log"]:
                value = round(math.exp(rng.uniform(math.log(low), math.log(high))))
                drawn[name] = int(min(max(value, low), high))
            else:
                drawn[name] = rng.randint(int(low), int(high))
        elif p["log"]:
            drawn[name] = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.6g}")
        else:
            drawn[name] = float(f"{rng.uniform(low, high):.6g}")
    return drawn


def text(value: Value) -> str:
    """A value as it goes on a command line or into an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
