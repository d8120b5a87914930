"""``/api/v1/projects/{id}/webhooks/``: a project's webhooks (project admins only): make
one (its signing secret is in the answer, once), list, delete, ``POST .../ping/`` a test
delivery, ``GET .../deliveries/`` the delivery log (newest first)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.notifications import services
from controlplane.notifications.models import EVENTS, Delivery, PayloadFormat, Webhook
from controlplane.tenancy.api.base import ProjectChildViewSet
from controlplane.tenancy.api.common import StrictSerializer
from controlplane.tenancy.models import Role

MAX_DELIVERIES_SHOWN = 200


class WebhookSerializer(serializers.ModelSerializer):
    class Meta:
        model = Webhook
        fields = ["id", "name", "url", "events", "payload_format", "active", "created_at"]
        read_only_fields = fields


class NewWebhookSerializer(StrictSerializer):
    name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        max_length=63,
        error_messages={"invalid": "Letters, digits, '.', '_' or '-', at most 63."},
    )
    url = serializers.CharField(
        max_length=500, help_text="http(s), a public address (checked again when sent)."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=list(EVENTS)), min_length=1, max_length=len(EVENTS)
    )
    payload_format = serializers.ChoiceField(
        choices=PayloadFormat.choices, default=PayloadFormat.JSON
    )


class CreatedWebhookSerializer(WebhookSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once: keep it.")

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = Delivery
        fields = ["id", "event", "state", "attempts", "response_status", "last_error",
                  "created_at", "delivered_at", "payload"]  # fmt: skip
        read_only_fields = fields


@extend_schema(parameters=[OpenApiParameter("project_pk", int, OpenApiParameter.PATH)])
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    ProjectChildViewSet,
):
    queryset = Webhook.objects.select_related("project")
    serializer_class = WebhookSerializer
    required_roles = {
        action: Role.ADMIN
        for action in ("list", "retrieve", "create", "destroy", "ping", "deliveries")
    }

    def get_serializer_class(self) -> type:
        return NewWebhookSerializer if self.action == "create" else WebhookSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.require_role(self.actor(), self.get_project(), Role.ADMIN)
        return super().list(request, *args, **kwargs)

    @extend_schema(request=NewWebhookSerializer, responses={201: CreatedWebhookSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = NewWebhookSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook, secret = services.create_webhook(
            self.actor(), self.get_project(), **data.validated_data
        )
        body = {**WebhookSerializer(webhook).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Webhook) -> None:
        services.delete_webhook(self.actor(), instance)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"])
    def ping(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        delivery = services.ping(self.actor(), self.get_object())
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def deliveries(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        shown = self.get_object().deliveries.order_by("-id")[:MAX_DELIVERIES_SHOWN]
        return Response(DeliverySerializer(shown, many=True).data)
