"""The grader's worker pool: math-verify grading and reward plug-ins under a hard per-item timeout.

``Grader`` runs items in long-lived worker processes (killed and replaced when they overrun);
``training_grader`` builds the one a training run uses, ``check_plugin`` makes a plug-in's trial
call before anything is written. Depends on ``grading`` and ``plugins``, never the other way round.

Standard library only at top level: this module is the entry point of the worker processes,
which must start cheaply and never load torch.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Callable, Sequence

from steer_cli.errors import SteerError
from steer_cli.rewards.extraction import extract_answer, gold_text
from steer_cli.rewards.grading import boxed, exact_match, verify_boxed
from steer_cli.rewards.plugins import RewardSpec, call, load_function, parse_reward

if TYPE_CHECKING:
    from steer_cli.settings import Settings

# --------------------------------------------------------------------------------------------------
# Batch grading with a hard per-item timeout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    """One graded item. timed_out: the hard timeout killed its worker (correct is then False)."""

    correct: bool
    has_answer: bool
    strict: bool
    timed_out: bool


_READY = "ready"
_FAILED = "failed"  # a plug-in worker could not import its function: (_FAILED, message)
_WARM_UP = (
    (r"\boxed{\frac{1}{2}}", r"\boxed{0.5}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\boxed{(3, \frac{\pi}{2}]}"),
    (r"\boxed{x^2+2x+1}", r"\boxed{(x+1)^2}"),
)
_START_TIMEOUT_S = 120.0
_MAX_START_FAILURES = 3


def _worker_main(conn: Any, reward: RewardSpec | None = None) -> None:
    """Worker loop. Math: receive (seq, gold_boxed, pred_boxed), reply (seq, correct). A plug-in
    (``reward``): receive (seq, completions, answers, rows), reply (seq, ("ok", floats) |
    ("error", message)). EOF ends it."""
    # Ctrl-C is the parent's to handle; it kills workers it no longer needs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if reward is not None:
        try:
            fn = load_function(reward)
        except SteerError as err:
            conn.send((_FAILED, str(err)))
            return
        conn.send(_READY)
        _serve(conn, lambda seq, completions, answers, rows: (seq, call(fn, completions, answers, rows)))
        return
    # math-verify logs each soft timeout; in a worker there is no one to read it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # The first parse/verify of a kind costs up to a second (lazy imports inside sympy and the
    # LaTeX parser): pay it here, so it does not count against the first item's timeout.
    for gold, pred in _WARM_UP:
        verify_boxed(gold, pred)
    conn.send(_READY)
    _serve(conn, lambda seq, gold_boxed, pred_boxed: (seq, verify_boxed(gold_boxed, pred_boxed)))


def _serve(conn: Any, answer: Callable[..., Any]) -> None:
    """Answer each request until EOF or None."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        conn.send(answer(*msg))


def _worker_context() -> Any:
    """forkserver where there is one, else spawn: both start workers from a fresh interpreter, never
    by forking this (possibly multi-threaded, torch-holding) process. The fork server imports
    math_verify once, so a replacement for a killed worker skips that import."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # No effect if the fork server already runs (started elsewhere): workers then import it.
        ctx.set_forkserver_preload(["__main__", __name__, "math_verify"])
        return ctx
    return multiprocessing.get_context("spawn")


class _Worker:
    def __init__(self, ctx: Any, reward: RewardSpec | None = None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child,) if reward is None else (child, reward), daemon=True,
            name="steer-grader",
        )
        self.process.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False

    def ask_to_exit(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass

    def stop(self, graceful: bool = False) -> None:
        if graceful:
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.ask_to_exit()
    while workers:
        w = workers.pop()
        w.stop(graceful=w.ready)  # one still importing would not read the request soon


@dataclass
class _Job:
    index: int
    payload: tuple[Any, ...]  # what the worker receives after the sequence number
    strict: bool = False


@dataclass(frozen=True)
class Score:
    """One item scored by a reward plug-in. value is None when the call failed (error says how)
    or overran the hard timeout (timed_out); values holds every value of a call of several."""

    value: float | None
    timed_out: bool = False
    error: str | None = None
    values: tuple[float, ...] = ()


class Grader:
    """Grades (completion, gold answer) pairs in long-lived worker processes.

    Each item gets at most `timeout` seconds of a worker; an overrunning worker is killed and
    replaced and its item graded wrong with timed_out=True. A crashed worker's item is graded
    wrong too. num_workers=0 grades in-process (no hard timeout; for debugging).

    ``reward`` (``rewards.plugins``): ``math`` (the default) grades with math-verify in the
    workers; ``exact`` compares normalised strings in-process (linear time, no workers); a
    plug-in spec starts workers that import the plug-in and score items with ``score``.

    Workers come from multiprocessing's fork server ("spawn" where there is none), never from a
    fork of this process: safe when it holds torch threads, and callable from any thread. Like
    spawned processes, the fork server imports the parent's `__main__` script: keep a script's
    work under `if __name__ == "__main__":`. Graded items run in the workers' main thread, so
    math-verify's own (soft) timeouts stay active there too.
    """

    def __init__(
        self, num_workers: int = 2, timeout: float = 5.0, template: str = "qwen_math",
        truncated_box_fallback: bool = False, reward: str = "math",
    ) -> None:
        if num_workers < 0:
            raise SteerError(f"grader num_workers must be >= 0, got {num_workers}")
        if not timeout > 0:
            raise SteerError(f"grader timeout must be > 0 seconds, got {timeout}")
        self.spec = parse_reward(reward)
        self.num_workers = 0 if self.spec.kind == "exact" else num_workers
        self.timeout = float(timeout)
        self.template = template
        self.truncated_box_fallback = truncated_box_fallback
        self._plugin = load_function(self.spec) if self.spec.plugin and self.num_workers == 0 else None
        self._ctx = _worker_context()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._closed = False
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        for _ in range(self.num_workers):
            self._workers.append(self._new_worker())

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.spec if self.spec.plugin else None)

    @property
    def plugin(self) -> bool:
        """True for a plug-in reward (use ``score``), False for math/exact (use ``grade``)."""
        return self.spec.plugin

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers. Idempotent."""
        self._closed = True
        self._finalizer()

    @property
    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (diagnostics)."""
        return [w.process.pid for w in self._workers]

    def _check_open(self) -> None:
        if self._closed:
            raise SteerError("this Grader is closed; create a new one")

    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Grade]:
        """Grades of (completion, gold answer) items, in the items' order (math or exact)."""
        self._check_open()
        if self.spec.plugin:
            raise SteerError(f"reward {self.spec.text} is a plug-in: use Grader.score")
        results: list[Any] = [None] * len(items)
        if self.spec.kind == "exact":
            for i, (completion, answer) in enumerate(items):
                ok, has_answer = exact_match(completion, answer, self.template,
                                             truncated_box_fallback=self.truncated_box_fallback)
                results[i] = Grade(correct=ok, has_answer=has_answer, strict=ok, timed_out=False)
            return results
        jobs: list[_Job] = []
        for i, (completion, answer) in enumerate(items):
            gold = gold_text(answer)  # a bad gold answer raises here, before any work
            pred = extract_answer(completion, self.template,
                                  truncated_box_fallback=self.truncated_box_fallback)
            if pred is None:
                results[i] = Grade(correct=False, has_answer=False, strict=False, timed_out=False)
            else:
                jobs.append(_Job(i, (boxed(gold), boxed(pred)), pred == gold))
        if self.num_workers == 0:
            for job in jobs:
                ok = verify_boxed(*job.payload)
                results[job.index] = Grade(ok, True, job.strict, False)
        elif jobs:
            with self._lock:
                self._run(jobs, results)
        return results

    def score(self, items: Sequence[tuple[str, Any, Any]]) -> list[Score]:
        """A plug-in's reward of each (completion, gold answer, row) item, in the items' order:
        one call per item (lists of one), each under the hard timeout."""
        return self._call([(i, ([c], [a], [r])) for i, (c, a, r) in enumerate(items)], len(items))

    def dry_run(self, completions: Sequence[str], answer: Any, row: Any) -> list[float]:
        """One call of the plug-in with ``completions`` of one problem (the check before a run
        starts); a one-line SteerError for an error, a timeout or a malformed return value."""
        (result,) = self._call([(0, (list(completions), [answer] * len(completions),
                                     [row] * len(completions)))], 1)
        if result.value is None:
            why = f"did not return within {self.timeout:g} s" if result.timed_out else result.error
            raise SteerError(f"reward {self.spec.text}: a trial call on the first problem {why}; "
                             "fix the function (it is called as fn(completions, answers, rows))")
        return list(result.values)

    def _call(self, calls: list[tuple[int, tuple[Any, ...]]], n: int) -> list[Any]:
        self._check_open()
        if not self.spec.plugin:
            raise SteerError(f"reward {self.spec.text} is built in: use Grader.grade")
        results: list[Any] = [None] * n
        if self.num_workers == 0:
            for index, payload in calls:
                results[index] = self._scored(call(self._plugin, *payload))
        elif calls:
            with self._lock:
                self._run([_Job(i, p) for i, p in calls], results)
        return results

    @staticmethod
    def _scored(reply: Any) -> Score:
        status, value = reply if isinstance(reply, tuple) and len(reply) == 2 else ("error", "bad reply")
        if status != "ok":
            return Score(None, False, str(value))
        return Score(value[0] if value else None, values=tuple(value))

    def _done(self, job: _Job, reply: Any) -> Any:
        if self.spec.plugin:
            return self._scored(reply)
        return Grade(bool(reply), True, job.strict, False)

    def _failed(self, job: _Job, timed_out: bool) -> Any:
        if self.spec.plugin:
            return Score(None, timed_out, "timed out" if timed_out else "its worker process died")
        return Grade(False, True, job.strict, timed_out)

    # -- worker pool -------------------------------------------------------------------------------

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        self._workers[self._workers.index(worker)] = self._new_worker()

    def _start_failed(self, worker: _Worker, why: str) -> None:
        self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
            raise SteerError(
                f"grader worker processes keep failing to start ({why}); if you use Grader from "
                "a script, put the script's code under `if __name__ == '__main__':`, or use "
                "num_workers=0"
            )
        self._replace(worker)

    def _run(self, jobs: list[_Job], results: list[Any]) -> None:
        pending = deque(jobs)
        busy: dict[_Worker, tuple[_Job, float]] = {}
        seq_of: dict[_Worker, int] = {}
        try:
            while pending or busy:
                for w in list(self._workers):
                    if w.ready and w not in busy and pending:
                        if not w.process.is_alive():  # died while idle
                            self._replace(w)
                            continue
                        job = pending.popleft()
                        try:
                            w.conn.send((job.index, *job.payload))
                        except (OSError, ValueError):
                            pending.appendleft(job)  # never reached the worker: retry elsewhere
                            self._replace(w)
                            continue
                        busy[w] = (job, time.monotonic() + self.timeout)
                        seq_of[w] = job.index

                now = time.monotonic()
                deadlines = [d for _, d in busy.values()]
                deadlines += [w.started + _START_TIMEOUT_S for w in self._workers if not w.ready]
                wait_s = max(0.0, min(deadlines) - now) if deadlines else 0.0
                waitables: list[Any] = [w.conn for w in self._workers]
                waitables += [w.process.sentinel for w in self._workers]
                ready = set(wait(waitables, timeout=wait_s))

                for w in list(self._workers):
                    if w.conn in ready:
                        try:
                            msg = w.conn.recv()
                        except (EOFError, OSError):
                            msg = None
                        if msg == _READY:
                            w.ready = True
                            self._start_failures = 0
                            continue
                        if isinstance(msg, tuple) and msg and msg[0] == _FAILED:
                            raise SteerError(str(msg[1]))  # the plug-in does not import: no retry helps
                        if msg is not None and w in busy and msg[0] == seq_of[w]:
                            job, _ = busy.pop(w)
                            results[job.index] = self._done(job, msg[1])
                            continue
                    if w.conn in ready or w.process.sentinel in ready:
                        if w.process.is_alive() and w.conn not in ready:
                            continue
                        # The worker died (or sent garbage): its item, if any, is graded wrong.
                        if w in busy:
                            job, _ = busy.pop(w)
                            results[job.index] = self._failed(job, timed_out=False)
                            self._replace(w)
                        elif not w.ready:
                            self._start_failed(w, f"exit code {w.process.exitcode}")
                        else:
                            self._replace(w)

                now = time.monotonic()
                for w, (job, deadline) in list(busy.items()):
                    if now >= deadline:
                        del busy[w]
                        results[job.index] = self._failed(job, timed_out=True)
                        self._replace(w)
                for w in list(self._workers):
                    if not w.ready and now >= w.started + _START_TIMEOUT_S:
                        self._start_failed(w, f"not ready after {_START_TIMEOUT_S:.0f} s")
        finally:
            # Interrupted mid-batch: workers still busy would answer stale items later.
            for w in list(busy):
                if w in self._workers:
                    self._replace(w)


def training_grader(s: Settings, *, workers: int | None = None) -> Any:
    """The ``Grader`` of a training run: train.reward with the run's template and limits."""
    return Grader(num_workers=s.train.grader_workers if workers is None else workers,
                  timeout=s.train.grade_timeout, template=s.prompt.template,
                  truncated_box_fallback=s.train.grade_truncated_box, reward=s.train.reward)


def check_plugin(s: Settings, answer: Any, row: Any) -> None:
    """A plug-in reward's trial call on the first problem (its gold answer and an empty
    completion), in a grader worker under the hard timeout: an import error, a missing function,
    an exception, a wrong number of values or a non-finite one is a one-line error before anything
    is written. Nothing to check for math and exact."""
    if not parse_reward(s.train.reward).plugin:
        return
    with training_grader(s, workers=min(1, s.train.grader_workers)) as grader:
        grader.dry_run([answer, ""], answer, row)
