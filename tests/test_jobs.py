"""The between-steps job queue of the frame loop and the gallery thread: a callable and a Future."""

from __future__ import annotations

import threading

import pytest

from agent.errors import FaceagentError
from agent.service.jobs import JobQueue, JobsClosed, outcome


def test_jobs_run_in_order_on_the_owner_with_their_outcome_in_their_future() -> None:
    jobs: JobQueue[list[str]] = JobQueue("the owner")
    done: list[str] = []
    first = jobs.submit(lambda parts: parts.append("first") or threading.current_thread().name)
    failing = jobs.submit(lambda parts: 1 / 0)
    last = jobs.submit(lambda parts: parts.append("last") or len(parts))
    assert not first.done()  # nothing runs before the owner takes its jobs
    owner = threading.Thread(target=jobs.run_pending, args=(done,), name="owner")
    owner.start()
    owner.join()
    assert (first.result(), last.result(), done) == ("owner", 2, ["first", "last"])
    with pytest.raises(ZeroDivisionError):
        outcome(failing, 1, "the owner did not take the job")


def test_a_job_not_taken_in_time_is_cancelled_and_never_runs() -> None:
    jobs: JobQueue[list[str]] = JobQueue("the owner")
    ran: list[str] = []
    late = jobs.submit(lambda parts: parts.append("late"))
    with pytest.raises(FaceagentError, match="did not take the job within"):
        outcome(late, 0.01, "the owner did not take the job")
    assert jobs.run_pending(ran) == 0 and ran == []


def test_closing_fails_the_jobs_waiting_and_those_submitted_later() -> None:
    jobs: JobQueue[None] = JobQueue("the owner")
    waiting = jobs.submit(lambda _: "never")
    jobs.close()
    later = jobs.submit(lambda _: "never either")
    for future in (waiting, later):
        with pytest.raises(JobsClosed):
            outcome(future, 1, "the owner did not take the job")
