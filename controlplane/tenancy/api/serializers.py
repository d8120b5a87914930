"""Serializers for projects, members and tokens (validation of every field)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from controlplane.schema import body_rules
from controlplane.tenancy.api.base import caller_role
from controlplane.tenancy.api.common import StrictModelSerializer, StrictSerializer
from controlplane.tenancy.models import PRIORITY_CHOICES, ApiToken, Membership, Project, Role

User = get_user_model()
MAX_QUOTA = 1_000_000


class PriorityField(serializers.ChoiceField):
    """A priority by name (low, normal, high); stored as its number."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=[name for _, name in PRIORITY_CHOICES], **kwargs)

    def to_internal_value(self, data: Any) -> int:
        name = super().to_internal_value(data)
        return next(value for value, label in PRIORITY_CHOICES if label == name)

    def to_representation(self, value: Any) -> str:
        return dict(PRIORITY_CHOICES).get(value, str(value))


class ProjectSerializer(StrictModelSerializer):
    role = serializers.SerializerMethodField(help_text="Your role in this project.")
    max_gpus = serializers.IntegerField(
        min_value=0, max_value=MAX_QUOTA, allow_null=True, required=False
    )
    max_concurrent_jobs = serializers.IntegerField(
        min_value=0, max_value=MAX_QUOTA, allow_null=True, required=False
    )
    max_requests_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_QUOTA * 60, allow_null=True, required=False
    )
    max_storage_bytes = serializers.IntegerField(
        min_value=0, max_value=2**62, allow_null=True, required=False
    )
    max_priority = PriorityField(
        required=False,
        help_text="The highest priority its jobs and deployments may ask for (operators set it).",
    )

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "max_gpus",
            "max_concurrent_jobs",
            "max_requests_per_minute",
            "max_priority",
            "max_storage_bytes",
            "role",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "role", "created_at", "updated_at"]
        extra_kwargs = {"name": {"validators": []}}  # uniqueness: a 409 from the service

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, obj: Project) -> str | None:
        request = self.context.get("request")
        return caller_role(request, obj.pk) if request is not None else None


class ProjectUpdateSerializer(ProjectSerializer):
    class Meta(ProjectSerializer.Meta):
        read_only_fields = [*ProjectSerializer.Meta.read_only_fields, "name"]

    def validate(self, attrs: dict) -> dict:
        name = self.initial_data.get("name") if isinstance(self.initial_data, dict) else None
        if name is not None and self.instance is not None and name != self.instance.name:
            raise serializers.ValidationError({"name": ["A project cannot be renamed."]})
        return attrs


class MembershipSerializer(StrictModelSerializer):
    username = serializers.SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=User.objects.all(),
        help_text="The user's username.",
        error_messages={"does_not_exist": "There is no user named '{value}'."},
    )
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "created_at"]
        read_only_fields = ["id", "created_at"]


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


@body_rules(exclusive=(("expires_in_days", "expires_at"),))
class TokenSerializer(StrictModelSerializer):
    state = serializers.CharField(read_only=True)
    expires_in_days = serializers.IntegerField(
        min_value=1,
        max_value=3650,
        required=False,
        write_only=True,
        help_text="Expire after this many days (or give expires_at); default: never.",
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "state",
            "created_at",
            "expires_at",
            "expires_in_days",
            "revoked_at",
            "last_used_at",
            "last_used_ip",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "state",
            "created_at",
            "revoked_at",
            "last_used_at",
            "last_used_ip",
        ]
        extra_kwargs = {"name": {"max_length": 100, "allow_blank": False}}

    def validate(self, attrs: dict) -> dict:
        days = attrs.pop("expires_in_days", None)
        if days is not None and attrs.get("expires_at") is not None:
            raise serializers.ValidationError(
                {"expires_in_days": ["Give expires_in_days or expires_at, not both."]}
            )
        if days is not None:
            attrs["expires_at"] = timezone.now() + timedelta(days=days)
        elif attrs.get("expires_at") is not None and attrs["expires_at"] <= timezone.now():
            raise serializers.ValidationError({"expires_at": ["Must be in the future."]})
        return attrs


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(
        read_only=True, help_text="The secret. Shown only in this response; store it now."
    )

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
