"""Signals other apps listen to (jobs imports none of them: the arrow points here)."""

from django.dispatch import Signal

#: Sent after the commit that made a job SUCCEEDED; ``job_id`` is its id.
job_succeeded = Signal()

#: Sent after the commit that recorded a service node's endpoint (its workload said it is
#: ready for traffic); ``job_id``, ``node_id``.
node_ready = Signal()

#: Sent after the commit that ended an attempt (any final state); ``job_id``,
#: ``attempt_id``, ``state``.
attempt_finished = Signal()

#: Sent after the commit that changed a job's state; ``job_id``, ``old``, ``new`` and
#: ``preempted`` (it went back to the queue because it was preempted or drained).
job_transitioned = Signal()

#: Sent after the commit that stored a metrics report; ``job_id``, ``step``, ``values``
#: (the names and numbers kept).
metrics_recorded = Signal()

#: Sent after the commit that ended a sweep; ``sweep_id``, ``state``.
sweep_finished = Signal()
