"""Monitoring: NVML and host samplers, telemetry streaming, history, dashboards, /metrics."""
