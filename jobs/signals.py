"""Signals other apps listen to (jobs imports none of them: the arrow points here)."""

from django.dispatch import Signal

#: Sent after the commit that made a job SUCCEEDED; ``job_id`` is its id.
job_succeeded = Signal()
