"""The job state rules of SPEC §2.1, checked by hypothesis against a real ferryd: random
sequences of API calls (create, add files, resume, suspend, cancel, complete, set
properties, bad calls) on jobs whose files a real HTTP server serves, so transfers really
happen while the calls arrive.

The model cannot know how far a transfer got, so a resumed job is "active": observed as any
of QUEUED, CONNECTING, TRANSFERRING or TRANSFERRED (or ERROR when it holds a file that does
not exist on the server). Where the daemon's answer resolves a race (adding a file to a job
that had just become TRANSFERRED suspends it), the model follows the answer, after checking
that it is one the rules allow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.helpers.jobs import temps

RUNNING = frozenset({"QUEUED", "CONNECTING", "TRANSFERRING", "TRANSFERRED"})
FINAL = frozenset({"ACKNOWLEDGED", "CANCELLED"})
GOOD = 3  # files the server has; index GOOD is one it does not have
MAX_JOBS = 4  # few jobs, so that the steps of an example meet on the same ones

VALID_PROPS = st.one_of(
    st.fixed_dictionaries({"priority": st.sampled_from(["foreground", "high", "normal", "low"])}),
    st.fixed_dictionaries({"min_retry_delay": st.integers(5, 10_000)}),
    # NUL is refused in every string (E_INVALIDARG): not a valid description.
    st.fixed_dictionaries(
        {"description": st.text(st.characters(exclude_characters="\x00"), max_size=20)}
    ),
    st.fixed_dictionaries({"dynamic_content": st.booleans()}),
    st.fixed_dictionaries({"no_progress_timeout": st.integers(0, 10**6)}),
)
INVALID_PROPS = st.sampled_from(
    [
        {"min_retry_delay": 1},
        {"priority": "urgent"},
        {"bogus": 1},
        {"no_progress_timeout": -1},
        {"dynamic_content": "yes"},
        {"display_name": ""},
    ]
)


@dataclass
class ModelJob:
    id: str
    state: str = "SUSPENDED"  # SUSPENDED, ACTIVE, or a final state
    files: list[tuple[Path, int]] = field(default_factory=list)  # local name, server file

    @property
    def has_bad_file(self) -> bool:
        return any(which == GOOD for _, which in self.files)

    def allowed(self) -> frozenset[str]:
        if self.state == "ACTIVE":
            return RUNNING | {"ERROR"} if self.has_bad_file else RUNNING
        return frozenset({self.state})


def test_job_state_machine(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    payloads = [hashlib.sha256(bytes([i])).digest() * (1000 + 700 * i) for i in range(GOOD)]
    urls = [http_server.add(f"s{i}.bin", p) for i, p in enumerate(payloads)]
    urls.append(http_server.url("missing.bin"))
    counter = iter(range(10**9))

    class JobRules(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.jobs: list[ModelJob] = []
            self.dir = dest / f"run{next(counter)}"
            self.dir.mkdir()

        def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            return ferryd.call(method, path, body)

        def pick(self, i: int) -> ModelJob:
            return self.jobs[i % len(self.jobs)]

        def refused_if_final(self, job: ModelJob, status: int, body: Any) -> bool:
            """A final job refuses every change with BG_E_INVALID_STATE (409)."""
            if job.state in FINAL:
                assert (status, body["error"]["code"]) == (409, "BG_E_INVALID_STATE"), body
                return True
            return False

        def check_files_on_disk(self, job: ModelJob, published: int) -> None:
            """After complete/cancel: no temporary file of the job is left; exactly the
            transferred files exist under their local names, with the right bytes."""
            mine = [local for local, _ in job.files]
            for t in temps(self.dir):
                assert not any(t.name.startswith(f".{m.name}.") for m in mine), t
            present = 0
            for local, which in job.files:
                if local.exists():
                    assert which != GOOD and local.read_bytes() == payloads[which]
                    present += 1
            assert present == published

        # ---- rules ------------------------------------------------------------------

        @initialize(which=st.integers(0, GOOD))
        def a_job_with_a_file(self, which: int) -> None:
            self.create()
            self.add_file(0, which)

        @precondition(lambda self: len(self.jobs) < MAX_JOBS)
        @rule()
        def create(self) -> None:
            status, body = self.call("POST", "/v1/jobs", {"display_name": "hyp"})
            assert status == 201, body
            assert body["state"] == "SUSPENDED" and body["progress"]["files_total"] == 0
            self.jobs.append(ModelJob(body["id"]))

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100), which=st.integers(0, GOOD))
        def add_file(self, i: int, which: int) -> None:
            job = self.pick(i)
            local = self.dir / f"{job.id[:8]}-{len(job.files)}.bin"
            item = {"remote_name": urls[which], "local_name": str(local)}
            status, body = self.call("POST", f"/v1/jobs/{job.id}/files", {"files": [item]})
            if self.refused_if_final(job, status, body):
                return
            assert status == 200, body
            before = job.allowed()
            job.files.append((local, which))
            assert body["progress"]["files_total"] == len(job.files)
            if job.state == "ACTIVE" and body["state"] == "SUSPENDED":
                # It had just become TRANSFERRED; a new file sends it back to SUSPENDED.
                assert "TRANSFERRED" in before
                job.state = "SUSPENDED"
            assert body["state"] in job.allowed() | before, body

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100))
        def resume(self, i: int) -> None:
            job = self.pick(i)
            status, body = self.call("POST", f"/v1/jobs/{job.id}/resume", {})
            if self.refused_if_final(job, status, body):
                return
            if not job.files:
                assert body["error"]["code"] == "BG_E_EMPTY" and status >= 400, body
                return
            assert status == 200 and body["result"]["code"] == "S_OK", body
            job.state = "ACTIVE"
            assert body["job"]["state"] in job.allowed(), body

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100))
        def suspend(self, i: int) -> None:
            job = self.pick(i)
            status, body = self.call("POST", f"/v1/jobs/{job.id}/suspend", {})
            if self.refused_if_final(job, status, body):
                return
            assert status == 200 and body["job"]["state"] == "SUSPENDED", body
            job.state = "SUSPENDED"

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100))
        def cancel(self, i: int) -> None:
            job = self.pick(i)
            status, body = self.call("POST", f"/v1/jobs/{job.id}/cancel", {})
            if self.refused_if_final(job, status, body):
                return
            assert status == 200 and body["job"]["state"] == "CANCELLED", body
            assert body["result"]["code"] == "S_OK", body
            job.state = "CANCELLED"
            self.check_files_on_disk(job, published=0)

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100))
        def complete(self, i: int) -> None:
            job = self.pick(i)
            status, body = self.call("POST", f"/v1/jobs/{job.id}/complete", {})
            if self.refused_if_final(job, status, body):
                return
            assert status == 200 and body["job"]["state"] == "ACKNOWLEDGED", body
            progress = body["job"]["progress"]
            done = progress["files_transferred"]
            partial = done < progress["files_total"]
            assert body["result"]["code"] == ("BG_S_PARTIAL_COMPLETE" if partial else "S_OK")
            job.state = "ACKNOWLEDGED"
            self.check_files_on_disk(job, published=done)

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100), props=VALID_PROPS)
        def set_valid(self, i: int, props: dict[str, Any]) -> None:
            job = self.pick(i)
            status, body = self.call("PATCH", f"/v1/jobs/{job.id}", props)
            if self.refused_if_final(job, status, body):
                return
            assert status == 200, body
            for key, value in props.items():
                assert body[key] == value
            assert body["state"] in job.allowed(), body

        @precondition(lambda self: self.jobs)
        @rule(i=st.integers(0, 100), props=INVALID_PROPS)
        def set_invalid(self, i: int, props: dict[str, Any]) -> None:
            job = self.pick(i)
            status, body = self.call("PATCH", f"/v1/jobs/{job.id}", props)
            refused = {(400, "E_INVALIDARG")}
            if job.state in FINAL:  # either check may come first
                refused.add((409, "BG_E_INVALID_STATE"))
            assert (status, body["error"]["code"]) in refused, body

        @rule(
            call=st.sampled_from(["unknown-job", "relative-path", "bad-sha256", "no-files"]),
            i=st.integers(0, 100),
        )
        def bad_call(self, call: str, i: int) -> None:
            """Bad calls are refused and change nothing (the invariant checks the rest)."""
            if call == "unknown-job":
                status, body = self.call("POST", "/v1/jobs/no-such-job/resume", {})
                assert (status, body["error"]["code"]) == (404, "BG_E_NOT_FOUND")
                return
            if not self.jobs:
                return
            job = self.pick(i)
            item: dict[str, Any] = {"remote_name": urls[0], "local_name": "relative/x.bin"}
            if call == "bad-sha256":
                item = {"remote_name": urls[0], "local_name": str(self.dir / "x"), "sha256": "0"}
            files = [] if call == "no-files" else [item]
            status, body = self.call("POST", f"/v1/jobs/{job.id}/files", {"files": files})
            if job.state in FINAL and status == 409:
                return  # a final job may refuse before it looks at the arguments
            assert (status, body["error"]["code"]) == (400, "E_INVALIDARG"), body

        # ---- what must hold after every step ----------------------------------------

        @invariant()
        def states_follow_the_rules(self) -> None:
            for job in self.jobs:
                status, body = self.call("GET", f"/v1/jobs/{job.id}")
                assert status == 200, body
                assert body["state"] in job.allowed(), (
                    body["state"],
                    body["error"] and body["error"]["description"],
                )
                progress = body["progress"]
                assert progress["files_total"] == len(job.files)
                assert progress["files_transferred"] <= progress["files_total"]
                if progress["bytes_total"] is not None:
                    assert progress["bytes_transferred"] <= progress["bytes_total"]
                if body["state"] == "TRANSFERRED":
                    assert progress["files_transferred"] == progress["files_total"]
                if body["state"] == "ERROR":
                    assert body["error"]["code"] == "BG_E_HTTP_ERROR_404", body
                    assert body["error"]["file"]["remote_name"] == urls[GOOD]
                else:
                    assert body["error"] is None, body

        def teardown(self) -> None:
            for job in self.jobs:
                if job.state not in FINAL:
                    self.call("POST", f"/v1/jobs/{job.id}/cancel", {})

    JobRules.TestCase.settings = settings(
        max_examples=15, stateful_step_count=20, deadline=None, database=None
    )
    JobRules.TestCase().runTest()
