"""The OpenAI-compatible gateway: ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` in front of every deployment's replicas.

A lean ASGI app (Starlette), with Django kept off the hot path: callers' tokens
(``auth``) and the routing table (``router``) are cached in memory and refreshed when the
control plane says they changed (Redis pub/sub) or every few seconds. It is mounted at
``/v1`` of the control plane's own server (``make run``) and runs alone as
``python -m serving.gateway`` (several behind any load balancer) for production.
"""
