"""``${CP_...}`` in a spec's ``env`` values and ``args``: the job's own directories, filled
in by the worker when the node starts, so an unmodified script can be pointed at them
(``--output_dir ${CP_OUTPUT_DIR}``). Only the names in ``EXPANDED`` are expanded; any
other ``${...}`` is refused at submit (a typo would otherwise reach the script as it is).
``$${`` is a literal ``${``; a ``$`` not followed by ``{`` is left alone.
"""

from __future__ import annotations

import re

#: What a spec may reference, and what each is.
EXPANDED = {
    "CP_CHECKPOINT_DIR": "the job's checkpoint directory (kept across attempts)",
    "CP_WORK_DIR": "this node's working directory (a copy of the code)",
    "CP_OUTPUT_DIR": "the job's output directory (kept after it ends, downloadable)",
}
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}?")


def unknown_references(text: str) -> list[str]:
    """The ``${...}`` in ``text`` that would not be expanded ('' for an unclosed one)."""
    bad = []
    for match in _REFERENCE.finditer(text):
        if match.group(0) == "$${":
            continue
        name = match.group(1)
        if not match.group(0).endswith("}"):
            bad.append(match.group(0))
        elif name not in EXPANDED:
            bad.append(match.group(0))
    return bad


def problem(text: str) -> str:
    """What is wrong with ``text``'s references, or ''."""
    bad = unknown_references(text)
    if not bad:
        return ""
    names = ", ".join("${" + n + "}" for n in EXPANDED)
    return f"{bad[0]} is not expanded: only {names} are (write $${{ for a literal '${{')."


def expand(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``${NAME}`` of ``EXPANDED`` replaced by ``values[NAME]``."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if match.group(0).endswith("}") and name in values:
            return values[name]
        return match.group(0)

    return _REFERENCE.sub(one, text)
