"""Submitting, cancelling and resubmitting jobs: every change a user makes to a job.

``submit_job`` validates the spec and the code (an uploaded working directory, an
allowlisted server directory, or a built-in module), refuses a job the cluster could never
run, creates the PENDING job and asks for a scheduler pass after commit.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from controlplane.cluster.models import Worker
from controlplane.tenancy import secrets
from controlplane.tenancy.errors import Conflict, InsufficientStorage, Missing
from controlplane.tenancy.models import Project, Role
from controlplane.tenancy.services import (
    Actor,
    check_priority,
    record,
    require_role,
    visible_projects,
)
from jobs import events, storage
from jobs.archives import ArchiveError, NoRoom, resolve_inside, unpack
from jobs.lifecycle import request_tick, settle
from jobs.models import Attempt, Job
from jobs.spec import JobSpecSerializer, encode_tags, normalize, secret_refs
from jobs.states import ATTEMPT_LIVE, PRIORITY_BY_NAME, JobState, StopReason

PYTHONS = {"python", "python3"}
MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def project_for(actor: Actor, name: str) -> Project:
    """The project ``name`` if the actor is a member of it (else a 404 naming the field)."""
    project = visible_projects(actor.user).filter(name=name).first() if actor.user else None
    if project is None and actor.user is None:
        project = Project.objects.filter(name=name).first()
    if project is None:
        raise Missing(f"No project named {name!r} that you belong to.", "project")
    require_role(actor, project, Role.MEMBER)
    return project


def check_entrypoint(entrypoint: list[str], code_dir: Path | None) -> None:
    """The entrypoint must be a built-in module, or a script or module in the job's code."""
    head = entrypoint[0]
    if head in PYTHONS and len(entrypoint) >= 3 and entrypoint[1] == "-m":
        module = entrypoint[2]
        if not MODULE.match(module):
            raise _invalid("entrypoint", f"{module!r} is not a Python module name.")
        if code_dir is not None:
            parts = module.split(".")
            if resolve_inside(code_dir, "/".join(parts) + ".py") or resolve_inside(
                code_dir, "/".join(parts)
            ):
                return
        if any(
            module == p.rstrip(".") or module.startswith(p) for p in settings.JOB_BUILTIN_MODULES
        ):
            return
        allowed = ", ".join(settings.JOB_BUILTIN_MODULES)
        raise _invalid(
            "entrypoint",
            f"Module {module!r} is neither in the uploaded code nor a built-in ({allowed}).",
        )
    if head in PYTHONS:
        if len(entrypoint) < 2 or entrypoint[1].startswith("-"):
            raise _invalid(
                "entrypoint", "Give a script ([python, train.py]) or [python, -m, module]."
            )
        script = entrypoint[1]
    else:
        script = head
    if code_dir is None:
        raise _invalid(
            "entrypoint",
            f"{script!r} is not a built-in module: upload the code directory with the job "
            "(cpctl submit --dir) or name a server-side code_path.",
        )
    if resolve_inside(code_dir, script) is None or not (code_dir / script).resolve().is_file():
        raise _invalid("entrypoint", f"{script!r} is not a file inside the job's code directory.")


def check_feasible(nodes: int, gpus_per_node: int, procs_per_node: int, project: Project) -> None:
    """Refuse a job the cluster (or the project's quota) could never run."""
    if project.max_gpus is not None and nodes * gpus_per_node > project.max_gpus:
        raise _invalid(
            "resources",
            f"This job needs {nodes * gpus_per_node} GPUs; project {project.name} may use at "
            f"most {project.max_gpus}.",
        )
    if gpus_per_node:
        sizes = list(
            Worker.objects.annotate(n=Count("gpus")).filter(n__gt=0).values_list("n", flat=True)
        )
        fit = sum(1 for n in sizes if n >= gpus_per_node)
        what = f"{gpus_per_node} GPU{'s' if gpus_per_node > 1 else ''}"
        largest = f"the largest host has {max(sizes)} GPUs" if sizes else "no host has a GPU"
    else:
        sizes = list(Worker.objects.values_list("cpu_slots", flat=True))
        fit = sum(1 for n in sizes if n >= procs_per_node)
        what = f"{procs_per_node} CPU slot{'s' if procs_per_node > 1 else ''}"
        largest = (
            f"the largest host has {max(sizes)} CPU slots" if sizes else "no host is registered"
        )
    if fit < nodes:
        raise _invalid(
            "resources",
            f"This cluster has {fit} host(s) with {what}; the job needs {nodes} ({largest}).",
        )


def _code_from_path(path: str) -> Path:
    candidate = Path(path).resolve()
    allowed = settings.JOB_CODE_DIRS
    if not any(candidate == root or root in candidate.parents for root in allowed):
        where = ", ".join(map(str, allowed)) or "none are configured (CP_JOB_CODE_DIRS)"
        raise _invalid("code_path", f"Not inside an allowed code directory: {where}.")
    if not candidate.is_dir():
        raise _invalid("code_path", f"{path} is not a directory.")
    return candidate


def _unpack_upload(upload: IO[bytes], size: int) -> Path:
    if size > settings.JOB_CODE_MAX_BYTES:
        raise _invalid(
            "code", f"The archive is {size} bytes; the limit is {settings.JOB_CODE_MAX_BYTES}."
        )
    dest = storage.code_root() / uuid.uuid4().hex
    try:
        return unpack(
            upload,
            dest,
            max_files=settings.JOB_CODE_MAX_FILES,
            max_bytes=settings.JOB_CODE_MAX_BYTES * 4,
            keep_free=settings.STORAGE_MIN_FREE_BYTES,
        )
    except NoRoom as exc:
        raise InsufficientStorage(str(exc), "code") from None
    except ArchiveError as exc:
        raise _invalid("code", str(exc)) from None


def check_environment(environment: dict, code_dir) -> None:
    """A requirements file must be in the upload; an image needs a host that runs images."""
    requirements = environment.get("requirements")
    if requirements:
        if code_dir is None:
            raise _invalid(
                "environment",
                f"requirements: {requirements} must be a file of the uploaded code; "
                "upload the directory that holds it (cpctl submit --dir).",
            )
        path = (Path(code_dir) / requirements).resolve()
        if not path.is_relative_to(Path(code_dir).resolve()) or not path.is_file():
            raise _invalid(
                "environment", f"requirements: {requirements} is not a file of the uploaded code."
            )
    if environment.get("image"):
        if not Worker.objects.online().exclude(container_runtime="").exists():
            raise _invalid(
                "environment",
                f"image: {environment['image']} needs a worker host with a container runtime "
                "(podman or docker), and no online host has one. Use environment: {pip: [...]} "
                "instead, or install podman on a GPU host.",
            )


def submit_job(
    actor: Actor,
    data: Any,
    code: IO[bytes] | None = None,
    code_size: int = 0,
    code_from: Job | None = None,
) -> Job:
    """Validate and queue a job. Raises ValidationError (field errors) or Forbidden.
    ``code_from``: a job (the caller may see) whose uploaded code this one reuses when it
    brings none of its own (clone and edit)."""
    if not isinstance(data, dict):
        raise _invalid("spec", "The spec must be a mapping of fields (YAML or JSON object).")
    serializer = JobSpecSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    spec = normalize(serializer.validated_data)
    project = project_for(actor, spec["project"])
    check_priority(project, PRIORITY_BY_NAME[spec["priority"]])
    resources = spec["resources"]
    check_feasible(
        resources["nodes"], resources["gpus_per_node"], resources["procs_per_node"], project
    )
    if code is not None and spec.get("code_path"):
        raise _invalid("code_path", "Upload a code archive or name a code_path, not both.")
    unpacked = None
    if code is not None:
        unpacked = code_dir = _unpack_upload(code, code_size)
    elif spec.get("code_path"):
        code_dir = _code_from_path(spec["code_path"])
    elif code_from is not None and code_from.code_dir:
        code_dir = Path(code_from.code_dir)
        if not code_dir.is_dir():
            raise _invalid("code", f"The code of job #{code_from.pk} is gone: upload it again.")
    else:
        code_dir = None
    try:
        environment = spec.get("environment") or {}
        check_environment(environment, code_dir)
        if absent := secrets.missing(project.pk, secret_refs(spec["env"])):
            raise _invalid(
                "env",
                f"Project {project.name} has no secret named {', '.join(absent)}; a project "
                f"admin adds it at /api/v1/projects/{project.pk}/secrets/.",
            )
        if not environment.get("image"):
            check_entrypoint(spec["entrypoint"], code_dir)
        with transaction.atomic():
            job = Job.objects.create(
                project=project,
                created_by=actor.user,
                name=spec["name"],
                tags=encode_tags(spec.get("tags", [])),
                spec=spec,
                entrypoint=spec["entrypoint"],
                args=spec["args"],
                env=spec["env"],
                code_dir=str(code_dir or ""),
                nodes=resources["nodes"],
                gpus_per_node=resources["gpus_per_node"],
                procs_per_node=resources["procs_per_node"],
                priority=PRIORITY_BY_NAME[spec["priority"]],
                max_restarts=spec["max_restarts"],
                max_runtime=spec.get("max_runtime"),
                checkpoint_keep=spec["checkpoint"]["keep"],
                image=environment.get("image", ""),
                reason="Waiting for the scheduler.",
            )
            detail = {"spec": spec, **({"cloned_from": code_from.pk} if code_from else {})}
            record(actor, "job.submitted", job, project=project, detail=detail)
            events.job_changed(job)
            request_tick()
    except BaseException:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
        raise
    return job


@transaction.atomic
def cancel_job(actor: Actor, job: Job) -> Job:
    """Cancel: a pending job ends at once; a running one gets SIGTERM, then SIGKILL after
    the grace period, on every node, and ends CANCELLED when they are gone."""
    job = Job.objects.select_for_update().get(pk=job.pk)
    require_role(actor, job.project, Role.MEMBER)
    if job.is_terminal():
        raise Conflict(f"Job #{job.pk} is {job.state} already; there is nothing to cancel.")
    now = timezone.now()
    if job.state == JobState.PENDING:
        job.save(
            update_fields=job.move_to(JobState.CANCELLED, finished_at=now, reason="Cancelled.")
        )
    else:
        attempt = (
            Attempt.objects.select_for_update().filter(job=job, state__in=ATTEMPT_LIVE).first()
        )
        job.save(update_fields=job.move_to(job.state, reason="Cancelling: stopping its processes."))
        if attempt is not None:
            attempt.stop_requested = StopReason.CANCEL
            attempt.save(update_fields=["stop_requested"])
            settle(attempt, now)
    record(actor, "job.cancelled", job, project=job.project)
    job.refresh_from_db()
    events.job_changed(job)
    return job


def resubmit_job(actor: Actor, job: Job) -> Job:
    """A new job with the same spec and code (terminal jobs stay final)."""
    require_role(actor, job.project, Role.MEMBER)
    check_priority(job.project, job.priority)  # the project's cap may have been lowered
    with transaction.atomic():
        copy = Job.objects.create(
            project=job.project,
            created_by=actor.user,
            name=job.name,
            spec=job.spec,
            entrypoint=job.entrypoint,
            args=job.args,
            env=job.env,
            code_dir=job.code_dir,
            nodes=job.nodes,
            gpus_per_node=job.gpus_per_node,
            procs_per_node=job.procs_per_node,
            priority=job.priority,
            max_restarts=job.max_restarts,
            max_runtime=job.max_runtime,
            checkpoint_keep=job.checkpoint_keep,
            image=job.image,
            reason=f"Resubmitted from job #{job.pk}.",
        )
        record(actor, "job.resubmitted", copy, project=job.project, detail={"from": job.pk})
        events.job_changed(copy)
        request_tick()
    return copy


def create_internal_job(
    actor: Actor,
    project: Project,
    *,
    kind: str,
    name: str,
    entrypoint: list[str],
    args: list[str],
    gpus: int,
    cpu_slots: int,
    priority: int,
    max_restarts: int,
    mounts: list[str],
    nodes: int = 1,
    spec: dict | None = None,
) -> Job:
    """A job the control plane itself runs for a project (a serving replica, a batch
    inference shard): same scheduler, quotas, leases and restarts as a user's job, but its
    entrypoint is the control plane's own module and it may read ``mounts`` (paths the
    caller checked, such as a model version's directory). Call inside a transaction."""
    job = Job.objects.create(
        project=project,
        created_by=actor.user,
        name=name[:100],
        kind=kind,
        spec=spec or {"kind": kind, "entrypoint": entrypoint, "args": args},
        entrypoint=entrypoint,
        args=args,
        env={},
        nodes=nodes,
        gpus_per_node=gpus,
        procs_per_node=cpu_slots if not gpus else 1,
        priority=priority,
        max_restarts=max_restarts,
        mounts=mounts,
        checkpoint_keep=1,
        reason="Waiting for the scheduler.",
    )
    record(actor, "job.submitted", job, project=project, detail={"kind": kind, "spec": job.spec})
    events.job_changed(job)
    request_tick()
    return job
