"""Deployments: a model version served by replicas that the scheduler places like jobs.

``config`` (engine flags and the replica's argv), ``services`` (every change a user makes:
create, scale, roll out, canary, promote, roll back, delete), ``controller`` (the loop
that makes the replicas match: start, drain, replace, autoscale, record events),
``autoscale`` (the scaling rule), ``stats`` (the replicas' own metrics, scraped and
added up per deployment) and ``routing`` (the table the gateway routes by, and the
pub/sub message that tells gateways it changed).
"""
