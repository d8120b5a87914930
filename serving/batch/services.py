"""Creating a batch inference job: the input checked row by row, stored once, and a job
of kind ``batch`` (the scheduler's, like any) that runs ``python -m serving.batch``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from rest_framework.exceptions import ValidationError

from controlplane.tenancy.models import Project, Role
from controlplane.tenancy.services import Actor, check_priority, record, require_role
from jobs import storage
from jobs.models import Job
from jobs.output_files import BadPath, check_path, open_output
from jobs.services import check_feasible, create_internal_job
from jobs.states import JobKind
from serving.batch import output
from serving.deployments.config import GPU_ONLY, QUANTIZATION
from serving.deployments.services import resolve_version
from serving.models import ModelVersion

BATCH_MODULE = ["python", "-m", "serving.batch"]


def _bad(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def check_input(source: IO[bytes], dest: Path) -> int:
    """Copy the JSONL to ``dest`` while checking each row; returns the number of rows."""
    limit, max_rows, rows, size = settings.BATCH_MAX_INPUT_BYTES, settings.BATCH_MAX_ROWS, 0, 0
    with open(dest, "wb") as out:
        for number, line in enumerate(source, start=1):
            size += len(line)
            if size > limit:
                raise _bad("input", f"The input is over {limit} bytes.")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _bad("input", f"Line {number} is not JSON: {exc}.") from None
            problem = _row_problem(row)
            if problem:
                raise _bad("input", f"Line {number}: {problem}")
            rows += 1
            if rows > max_rows:
                raise _bad("input", f"The input has more than {max_rows} rows.")
            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    if not rows:
        raise _bad("input", 'The input has no rows; send JSONL, one {"prompt": "..."} per line.')
    return rows


def _row_problem(row: Any) -> str:
    if not isinstance(row, dict):
        return 'each row must be a JSON object such as {"prompt": "..."}.'
    unknown = set(row) - {"prompt", "messages", "id", "max_tokens"}
    if unknown:
        names = ", ".join(sorted(unknown))
        return f"unknown field(s) {names}; rows take prompt or messages, id, max_tokens."
    if ("prompt" in row) == ("messages" in row):
        return "give one of prompt (a string) or messages (a list of {role, content})."
    if "prompt" in row and (not isinstance(row["prompt"], str) or not row["prompt"]):
        return "prompt must be a non-empty string."
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages
        ):  # fmt: skip
            return "messages must be a non-empty list of {role, content} strings."
    tokens = row.get("max_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        return "max_tokens must be an integer >= 1."
    if "id" in row and not isinstance(row["id"], str | int):
        return "id must be a string or an integer."
    return ""


def open_source(project: Project, source: dict[str, Any]) -> IO[bytes]:
    """The JSONL a batch job reads from storage the control plane already holds: a file of
    one of the project's jobs' kept outputs (``{"job": N, "path": "..."}``) or of a
    registered model version (``{"model": name, "version": V, "path": "..."}``, latest
    version when V is left out). Opened without following links."""
    path = source.get("path") or ""
    try:
        check_path(path)
    except BadPath as exc:
        raise _bad("input_from", str(exc)) from None
    if source.get("job") is not None:
        job = Job.objects.filter(pk=source["job"], project=project).first()
        opened = open_output(job.pk, path) if job is not None else None
        if job is None:
            raise _bad("input_from", f"Project {project.name} has no job {source['job']}.")
        if opened is None:
            raise _bad("input_from", f"Job {job.pk} kept no output file {path!r}.")
        return opened[0]
    version = resolve_version(project, source["model"], source.get("version"))
    root = Path(version.path)
    target = root / path
    if not storage.is_inside(target.parent, root):
        raise _bad("input_from", f"{path!r} is not a file of that version.")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise _bad(
            "input_from", f"Version {version.version} of {source['model']!r} has no file {path!r}."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _bad("input_from", f"{path!r} is not a regular file.")
    return os.fdopen(fd, "rb")


def create_batch_job(
    actor: Actor,
    project: Project,
    version: ModelVersion,
    source: IO[bytes],
    *,
    name: str,
    nodes: int = 1,
    gpus_per_node: int = 0,
    cpus_per_node: int = 1,
    quantization: str = "none",
    max_batch_size: int = 16,
    max_tokens: int = 64,
    temperature: float = 0.0,
    priority: int = 1,
    max_restarts: int = 3,
) -> Job:
    require_role(actor, project, Role.MEMBER)
    check_priority(project, priority)
    if version.model.project_id != project.pk:
        raise _bad("model", "That model belongs to another project.")
    if quantization not in QUANTIZATION:
        raise _bad("quantization", f"Use one of {', '.join(QUANTIZATION)}.")
    if not gpus_per_node and quantization in GPU_ONLY:
        raise _bad("quantization", f"{quantization} needs GPUs ({GPU_ONLY[quantization]}).")
    check_feasible(nodes, gpus_per_node, cpus_per_node, project)
    inputs = storage.root() / "batch-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=inputs, suffix=".partial")
    os.close(fd)
    try:
        rows = check_input(source, Path(tmp))
        with transaction.atomic():
            job = create_internal_job(
                actor,
                project,
                kind=JobKind.BATCH,
                name=name,
                entrypoint=BATCH_MODULE,
                args=[],
                gpus=gpus_per_node,
                cpu_slots=cpus_per_node,
                priority=priority,
                max_restarts=max_restarts,
                mounts=[],
                nodes=nodes,
            )
            folder = inputs / str(job.pk)
            folder.mkdir(exist_ok=True)
            path = folder / "input.jsonl"
            shutil.move(tmp, path)
            storage.share_read_only(folder, path, Path(version.path))
            job.args = [
                "--model", version.path,
                "--input", str(path),
                "--device", "auto" if gpus_per_node else "cpu",
                "--quantization", quantization,
                "--max-batch-size", str(max_batch_size),
                "--max-tokens", str(max_tokens),
                "--temperature", f"{temperature:g}",
            ] + ([] if gpus_per_node else ["--threads", str(cpus_per_node)])  # fmt: skip
            job.mounts = [version.path, str(folder)]
            job.spec = {
                "kind": JobKind.BATCH,
                "model": version.model.name,
                "version": version.version,
                "rows": rows,
                "nodes": nodes,
                "quantization": quantization,
                "max_batch_size": max_batch_size,
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            job.save(update_fields=["args", "mounts", "spec"])
            record(actor, "batch.created", job, project=project, detail=job.spec)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return job


def output_root(job: Job) -> Path:
    return storage.checkpoint_root(job.pk)


def rows_written(job: Job) -> int:
    return output.rows_done(output_root(job), job.nodes)
