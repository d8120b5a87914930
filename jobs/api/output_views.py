"""A job's outputs over the API (members and viewers of its project; anyone else: 404):

- ``GET jobs/{id}/outputs/[?prefix=dir]``: the files (path, size, modified) and their total;
- ``GET jobs/{id}/outputs/file/?path=...``: one file;
- ``GET jobs/{id}/outputs/archive/[?prefix=dir]``: all of them (or a directory) as .tar.gz.
"""

from __future__ import annotations

from django.http import FileResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.tenancy.api.base import scope_to_user
from controlplane.tenancy.api.common import StrictSerializer
from jobs import output_files
from jobs.models import Job


class PathQuery(StrictSerializer):
    path = serializers.CharField(max_length=1000)


class PrefixQuery(StrictSerializer):
    prefix = serializers.CharField(max_length=1000, required=False, allow_blank=True)


def _job(request: Request, job_id: int) -> Job:
    return get_object_or_404(scope_to_user(Job.objects.all(), request.user, "project"), pk=job_id)


def _checked(query: StrictSerializer, field: str, allow_empty: bool) -> str:
    query.is_valid(raise_exception=True)
    try:
        return output_files.check_path(query.validated_data.get(field, ""), allow_empty)
    except output_files.BadPath as exc:
        raise ValidationError({field: [str(exc)]}) from None


PREFIX = OpenApiParameter("prefix", str, description="Only the files under this directory.")


class OutputListView(APIView):
    """The job's output files: what it wrote to ``CP_OUTPUT_DIR`` and the declared
    working-directory dirs kept when a node ended."""

    @extend_schema(parameters=[PREFIX], responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, job_id: int) -> Response:
        job = _job(request, job_id)
        prefix = _checked(PrefixQuery(data=request.query_params), "prefix", True)
        files, total, truncated = output_files.listing(job.pk, prefix)
        return Response(
            {
                "job": job.pk,
                "count": len(files),
                "total_bytes": total,
                "truncated": truncated,
                "files": [
                    {"path": f.path, "size": f.size, "modified": f.modified.isoformat()}
                    for f in files
                ],
            }
        )


class OutputFileView(APIView):
    """One output file, as an attachment."""

    @extend_schema(
        parameters=[OpenApiParameter("path", str, required=True)], responses=OpenApiTypes.BINARY
    )
    def get(self, request: Request, job_id: int) -> FileResponse:
        job = _job(request, job_id)
        path = _checked(PathQuery(data=request.query_params), "path", False)
        opened = output_files.open_output(job.pk, path)
        if opened is None:
            raise NotFound(f"Job {job.pk} has no output file {path!r}.")
        handle, size = opened
        response = FileResponse(handle, as_attachment=True, filename=path.rsplit("/", 1)[-1])
        response["Content-Length"] = str(size)
        return response


class OutputArchiveView(APIView):
    """All the job's outputs (or a directory of them) as a gzipped tar, streamed."""

    @extend_schema(parameters=[PREFIX], responses=OpenApiTypes.BINARY)
    def get(self, request: Request, job_id: int) -> StreamingHttpResponse:
        job = _job(request, job_id)
        prefix = _checked(PrefixQuery(data=request.query_params), "prefix", True)
        response = StreamingHttpResponse(
            output_files.archive(job.pk, prefix), content_type="application/gzip"
        )
        name = f"job{job.pk}-outputs" + (f"-{prefix.replace('/', '-')}" if prefix else "")
        response["Content-Disposition"] = f'attachment; filename="{name}.tar.gz"'
        return response
