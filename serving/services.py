"""Every change to the model registry: create a model, register a version from a job's
final model, a checkpoint or an uploaded archive, delete. Only safetensors weights and
JSON/tokenizer files are ever kept (nothing that would be unpickled)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils.text import slugify
from rest_framework.exceptions import ValidationError

from controlplane.tenancy.errors import Conflict, InsufficientStorage, TooLarge
from controlplane.tenancy.models import Project, Role
from controlplane.tenancy.services import Actor, record, require_role
from jobs import storage
from jobs.archives import ArchiveError, ArchiveTooLarge, NoRoom, unpack
from jobs.models import Checkpoint, Job
from jobs.states import JobState
from serving.models import Model, ModelVersion, VersionSource

#: What a model version may hold: weights only as safetensors; config and tokenizer files.
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".md"}
#: Training state that a checkpoint carries and a model version does not.
TRAINING_ONLY = {"optimizer.safetensors", "trainer_state.json", "checkpoint.json"}
TRAINING_DIRS = {"rng"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
MAX_UPLOAD_FILES = 1000


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def models_root() -> Path:
    return storage.root() / "models"


#: Bytes per element of each dtype the safetensors format names.
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MAX_DIMENSION = 2**40


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DIMENSION:
        raise ValueError(f"{what} must be a whole number from 0 to 2**40, not {value!r}"[:200])
    return value


def safetensors_parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its header (no tensor is loaded). The header
    is checked as the format defines it (a JSON object of tensors with a dtype, a shape of
    non-negative sizes and data offsets that fit the file and match the shape); anything
    else is a ValueError that says what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("the file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise ValueError(f"its header length ({length} bytes) does not fit the file")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object of tensors")
    data_size = size - 8 - length
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValueError("__metadata__ must map names to strings")
            continue
        label = f"tensor {name[:80]!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{label} is not an object with dtype, shape and data_offsets")
        width = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        if width is None:
            raise ValueError(f"{label} has an unknown dtype {entry.get('dtype')!r}"[:200])
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or len(shape) > 16:
            raise ValueError(f"{label}: shape must be a list of at most 16 sizes")
        count = 1
        for dim in shape:
            count *= _count(dim, f"{label}: a dimension")
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise ValueError(f"{label}: data_offsets must be [begin, end]")
        begin, end = (_count(o, f"{label}: an offset") for o in offsets)
        if not begin <= end <= data_size:
            raise ValueError(f"{label}: its data_offsets lie outside the file")
        if end - begin != count * width:
            raise ValueError(f"{label}: its data_offsets do not match its shape and dtype")
        total += count
    return total


def _inspect(directory: Path) -> tuple[int, int, str]:
    """(size in bytes, parameter count, model_type) of a HF directory; raises ValueError."""
    config = directory / "config.json"
    if not config.is_file():
        raise ValueError("it has no config.json")
    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (ValueError, AttributeError):
        raise ValueError("config.json is not a JSON object") from None
    weights = list(directory.glob("*.safetensors"))
    if not weights:
        raise ValueError("it has no .safetensors weights")
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    try:
        params = sum(safetensors_parameters(p) for p in weights)
    except (ValueError, struct.error, OSError) as exc:
        raise ValueError(f"a weights file is not valid safetensors ({exc})") from None
    return size, params, model_type


def _left_out_why(path: Path) -> str:
    if path.is_symlink():
        return "a symbolic link"
    if path.name in TRAINING_ONLY or path.name in TRAINING_DIRS:
        return "training state, not needed to serve"
    if path.is_dir():
        return "a subdirectory"
    if path.suffix in PICKLE_SUFFIXES:
        return "a pickle: never loaded (weights must be .safetensors)"
    return f"not a model file ({', '.join(sorted(ALLOWED_SUFFIXES))})"


def _copy_model_files(source: Path, dest: Path) -> list[str]:
    """Copy what serving needs (not optimizer/RNG state, never a pickle) into ``dest``,
    atomically; what was left out, one line each."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest.parent))
    left_out = []
    try:
        for path in sorted(source.iterdir()):
            usable = path.name not in TRAINING_ONLY and path.suffix in ALLOWED_SUFFIXES
            if not path.is_symlink() and path.is_file() and usable:
                shutil.copy2(path, tmp / path.name)
            else:
                left_out.append(f"{path.name}: {_left_out_why(path)}")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return left_out


@transaction.atomic
def create_model(actor: Actor, project: Project, name: str, description: str = "") -> Model:
    require_role(actor, project, Role.MEMBER)
    if Model.objects.filter(project=project, name=name).exists():
        raise Conflict(f"Project {project.name} has a model named {name!r} already.", "name")
    model = Model.objects.create(
        project=project, name=name, description=description, created_by=actor.user
    )
    record(actor, "model.created", model, project=project)
    return model


def _add_version(
    actor: Actor,
    model: Model,
    source_dir: Path,
    source: str,
    *,
    job: Job | None = None,
    step: int | None = None,
    metrics: dict | None = None,
    copy: bool = True,
    note_left_out: bool = False,
) -> ModelVersion:
    """Put ``source_dir`` in the registry as the next version of ``model``.

    The files are copied and checked before any row is locked (a model of many GB takes
    minutes to copy; a transaction must not sit idle that long), then moved into place
    under the model's lock."""
    home = models_root() / str(model.pk)
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=home))
    staged = staging / "model"
    left_out: list[str] = []
    try:
        if copy:
            left_out = _copy_model_files(source_dir, staged)
        else:
            os.replace(source_dir, staged)
        try:
            size, params, model_type = _inspect(staged)
        except ValueError as exc:
            raise _invalid("source", f"Not a usable model directory: {exc}.") from None
        with transaction.atomic():
            Model.objects.select_for_update().filter(pk=model.pk).first()
            left = quota_left(model.project)
            if left is not None and size > left:
                raise TooLarge(_quota_message(model.project), "source")
            number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
            dest = home / str(number)
            if dest.exists():  # left by a version whose row was deleted
                shutil.rmtree(dest)
            os.replace(staged, dest)
            try:
                version = ModelVersion.objects.create(
                    model=model,
                    version=number,
                    source=source,
                    job=job,
                    checkpoint_step=step,
                    path=str(dest),
                    size_bytes=size,
                    parameter_count=params,
                    model_type=model_type,
                    metrics=metrics or {},
                    notes="\n".join(left_out[:100]) if note_left_out else "",
                    created_by=actor.user,
                )
                record(
                    actor,
                    "model.version_registered",
                    version,
                    project=model.project,
                    detail={"source": source, "job": job and job.pk, "step": step},
                )
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def register_checkpoint(actor: Actor, model: Model, checkpoint: Checkpoint) -> ModelVersion:
    """A checkpoint of one of the project's jobs becomes a version."""
    require_role(actor, model.project, Role.MEMBER)
    if checkpoint.job.project_id != model.project_id:
        raise _invalid("checkpoint", "That checkpoint belongs to another project's job.")
    path = Path(checkpoint.path)
    if not path.is_dir():
        raise _invalid("checkpoint", "The checkpoint's files are gone (pruned or moved).")
    return _add_version(
        actor,
        model,
        path,
        VersionSource.CHECKPOINT,
        job=checkpoint.job,
        step=checkpoint.step,
        metrics=checkpoint.metrics,
    )


def register_job_model(actor: Actor, model: Model, job: Job) -> ModelVersion:
    """The final model a succeeded job offered (``sdk.report_model``) becomes a version."""
    require_role(actor, model.project, Role.MEMBER)
    if job.project_id != model.project_id:
        raise _invalid("job", "That job belongs to another project.")
    if job.state != JobState.SUCCEEDED or not job.model_path:
        raise _invalid("job", "That job has not succeeded with a final model to register.")
    return _add_version(
        actor,
        model,
        Path(job.model_path),
        VersionSource.JOB,
        job=job,
        step=(job.progress or {}).get("step"),
        metrics=job.model_metrics,
    )


def register_outputs(actor: Actor, model: Model, job: Job, path: str) -> ModelVersion:
    """A directory of a job's outputs (an HF Trainer's ``output_dir``, say) becomes a
    version: its safetensors weights and JSON/tokenizer files; pickles and training state
    are left out, and the version's notes say which."""
    from jobs import output_files

    require_role(actor, model.project, Role.MEMBER)
    if job.project_id != model.project_id:
        raise _invalid("job", "That job belongs to another project.")
    try:
        path = output_files.check_path(path, allow_empty=True)
    except output_files.BadPath as exc:
        raise _invalid("outputs", str(exc)) from None
    root = storage.output_root(job.pk)
    source = root / path if path else root
    if source.is_symlink() or not source.is_dir() or not storage.is_inside(source, root):
        raise _invalid("outputs", f"Job {job.pk} has no output directory {path or '.'!r}.")
    return _add_version(
        actor, model, source, VersionSource.OUTPUTS, job=job,
        step=(job.progress or {}).get("step"), note_left_out=True,
    )  # fmt: skip


def _upload_name(path: PurePosixPath) -> str:
    """Why a member of an uploaded model archive is refused ("" if it is not)."""
    if len(path.parts) > 2:  # the files, or one directory holding them
        return "put the model files at the top level."
    if path.suffix not in ALLOWED_SUFFIXES:
        return (
            "only .safetensors weights and JSON/tokenizer files are accepted "
            "(no pickles: convert .bin/.pt with safetensors first)."
        )
    return ""


def storage_used(project: Project) -> int:
    """Bytes the project's model versions, its jobs' checkpoints and outputs take."""
    versions = ModelVersion.objects.filter(model__project=project).aggregate(s=Sum("size_bytes"))
    checkpoints = Checkpoint.objects.filter(job__project=project).aggregate(s=Sum("size_bytes"))
    outputs = Job.objects.filter(project=project).aggregate(s=Sum("outputs_bytes"))
    return (versions["s"] or 0) + (checkpoints["s"] or 0) + (outputs["s"] or 0)


def quota_left(project: Project) -> int | None:
    """Bytes the project may still store (None: no quota)."""
    if project.max_storage_bytes is None:
        return None
    return project.max_storage_bytes - storage_used(project)


def _quota_message(project: Project) -> str:
    return (
        f"Project {project.name} would pass its storage quota of {project.max_storage_bytes} "
        f"bytes ({storage_used(project)} used): delete model versions or ask an operator."
    )


def register_upload(actor: Actor, model: Model, archive: IO[bytes], size: int) -> ModelVersion:
    """An uploaded tar/zip of a HF directory (safetensors + JSON/tokenizer files only)."""
    require_role(actor, model.project, Role.MEMBER)
    if size > settings.MODEL_UPLOAD_MAX_BYTES:
        raise TooLarge(
            f"The archive is {size} bytes; the limit is {settings.MODEL_UPLOAD_MAX_BYTES}.",
            "archive",
        )
    left = quota_left(model.project)
    if left is not None and left <= 0:
        raise TooLarge(_quota_message(model.project), "archive")
    limit = settings.MODEL_UPLOAD_MAX_BYTES * 2
    staging = models_root() / ".uploads" / os.urandom(8).hex()
    try:
        # Names, sizes and the expansion are checked from the headers, before extracting.
        unpack(
            archive,
            staging,
            max_files=MAX_UPLOAD_FILES,
            max_bytes=limit if left is None else min(limit, left),
            max_ratio=settings.UPLOAD_MAX_EXPANSION,
            archive_size=size,
            keep_free=settings.STORAGE_MIN_FREE_BYTES,
            allow=_upload_name,
        )
    except ArchiveTooLarge as exc:
        message = _quota_message(model.project) if left is not None and left < limit else str(exc)
        raise TooLarge(message, "archive") from None
    except NoRoom as exc:
        raise InsufficientStorage(str(exc), "archive") from None
    except ArchiveError as exc:
        raise _invalid("archive", str(exc)) from None
    try:
        for path in staging.rglob("*"):
            if path.is_dir():
                raise _invalid("archive", f"{path.name}/: put the model files at the top level.")
        return _add_version(actor, model, staging, VersionSource.UPLOAD, copy=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def register_succeeded_job(job_id: int) -> ModelVersion | None:
    """After a job succeeds: register the final model it offered, as the next version of
    the model named after the job (created on first use). Called on ``job_succeeded``."""
    job = Job.objects.select_related("project", "created_by").get(pk=job_id)
    if not job.model_path:
        return None
    actor = Actor(user=job.created_by, via="system") if job.created_by else Actor.system()
    name = slugify(job.name)[:100] or f"job-{job.pk}"
    with transaction.atomic():
        model = Model.objects.filter(project=job.project, name=name).first()
        if model is None:
            model = Model.objects.create(
                project=job.project,
                name=name,
                description=f"Registered from job #{job.pk}.",
                created_by=job.created_by,
            )
            record(actor, "model.created", model, project=job.project)
    return _add_version(
        Actor.system(),
        model,
        Path(job.model_path),
        VersionSource.JOB,
        job=job,
        step=(job.progress or {}).get("step"),
        metrics=job.model_metrics,
    )


@transaction.atomic
@transaction.atomic
def delete_version(actor: Actor, version: ModelVersion) -> None:
    """Delete a version and its files. A version a live deployment serves (or rolls out)
    is refused with 409; deleted deployments that once served it go with it."""
    from serving.models import Deployment, DeploymentRevision, DeploymentState

    require_role(actor, version.model.project, Role.ADMIN)
    users = Deployment.objects.filter(
        pk__in=DeploymentRevision.objects.filter(model_version=version).values("deployment_id")
    )
    live = sorted(users.exclude(state=DeploymentState.DELETED).values_list("name", flat=True))
    if live:
        raise Conflict(
            f"{version} is served by deployment {', '.join(live)}: roll it to another version "
            "or delete it first.",
            "version",
        )
    for gone in users:  # history of deleted deployments: it goes with the version
        Deployment.objects.filter(pk=gone.pk).update(revision=None, canary=None)
        gone.delete()
    path = Path(version.path)
    record(actor, "model.version_deleted", version, project=version.model.project)
    version.delete()
    transaction.on_commit(lambda: shutil.rmtree(path, ignore_errors=True))
