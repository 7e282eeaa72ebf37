"""The tutorial's four experiments, each ending in a record and verdicts that quote the tutorial.

Every scenario takes a running ``Lab`` and returns its record (see ``record`` for the run format)::

    {"scenario": "round-robin", "title": ..., "settings": {...}, "runs": [run, ...],
     "verdicts": [{"claim": "...", "holds": true, "detail": "..."}], ...scenario figures}
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from proj import config
from proj.cli.demo import FIVE_MESSAGES
from proj.lab import record as rec
from proj.lab.session import Lab, LabError

UNLIMITED = 0  # prefetch multiplier 0: no basic.qos limit, the tutorial's first worker.py
FAIR = 1  # basic.qos(prefetch_count=1)

HEAVY_DOTS, LIGHT_DOTS, ROUNDS = 6, 1, 4
LONG_TASK = "Long task" + "." * 15
#: How far into the long task the worker is killed.
KILL_AT = 0.4

CLAIMS = {
    "round-robin": "By default, RabbitMQ will send each message to the next consumer, in sequence. "
    "On average every consumer will get the same number of messages.",
    "fair-dispatch-problem": "when all odd messages are heavy and even messages are light, one worker will be "
    "constantly busy and the other one will do hardly any work",
    "fair-dispatch": "don't dispatch a new message to a worker until it has processed and acknowledged the "
    "previous one. Instead, it will dispatch it to the next worker that is not still busy.",
    "redelivery": "If a consumer dies [...] without sending an ack, RabbitMQ will understand that a message "
    "wasn't processed fully and will re-queue it. [...] it will then quickly redeliver it to another consumer.",
    "redelivery-child": "In order to make sure a message is never lost, RabbitMQ supports message acknowledgments.",
    "durability": "the task_queue queue won't be lost even if RabbitMQ restarts [...] The durability options "
    "let the tasks survive even if RabbitMQ is restarted.",
}


@dataclasses.dataclass
class Options:
    workers: int = 2
    #: Who is killed in ``redelivery``: the worker's main process, or only the pool child running the task.
    kill: str = "worker"
    #: KILL (SIGKILL, a crash) or QUIT (SIGQUIT, Celery's cold shutdown) for the worker's main process.
    signal: str = "KILL"


def fair_workload(workers: int) -> list[str]:
    """Every ``workers``-th message heavy, the rest light: round-robin hands one worker all the heavy ones.

    With two workers that is the tutorial's "all odd messages are heavy and even messages are light".
    """
    n = ROUNDS * workers
    return [
        f"Heavy {i}" + "." * HEAVY_DOTS if i % workers == 1 % workers else f"Light {i}" + "." * LIGHT_DOTS
        for i in range(1, n + 1)
    ]


def _scenario(name: str, title: str, lab: Lab, options: Options, **extra) -> dict:
    return {
        "scenario": name,
        "title": title,
        "settings": {
            "workers": options.workers,
            "seconds_per_dot": lab.seconds_per_dot,
            "broker": "private" if lab.private else "given",
        },
        "runs": [],
        "verdicts": [],
        **extra,
    }


def _verdict(claim: str, holds: bool, detail: str) -> dict:
    return {"claim": claim, "holds": bool(holds), "detail": detail}


def run_messages(lab: Lab, label: str, messages: list[str], workers, during=None) -> dict:
    """Publish ``messages`` to the running ``workers``, show progress until all are done, return the run."""
    marks: list[dict] = []
    with lab.progress(label, []) as progress:
        published = lab.publish(messages)
        uuids = [p["uuid"] for p in published]
        progress.track(uuids)
        if during is not None:
            during(published, marks, progress)
        lab.wait_done(label, uuids, lab.timeout_for(messages))
    return lab.run_record(label, published, workers, marks)


def _names(messages: list[str]) -> str:
    return ", ".join(repr(m) for m in messages) if messages else "nothing"


# -- round-robin ---------------------------------------------------------------------------------


def round_robin(lab: Lab, options: Options) -> dict:
    """N workers with unlimited prefetch, the tutorial's five messages: who got which."""
    result = _scenario(
        "round-robin",
        f"Round-robin: {options.workers} workers, unlimited prefetch, the tutorial's five messages",
        lab,
        options,
    )
    workers = lab.ensure_workers(options.workers, UNLIMITED)
    run = run_messages(lab, "round-robin", FIVE_MESSAGES, workers)
    result["runs"].append(run)
    assignments = rec.received_by(run)
    result["assignments"] = assignments
    result["verdicts"].append(round_robin_verdict(run, FIVE_MESSAGES))
    return result


def round_robin_verdict(run: dict, messages: list[str]) -> dict:
    """Holds if worker k got messages k, k+n, k+2n, ... (each once), for n workers in the order they got one."""
    n = len(run["workers"])
    assignments = rec.received_by(run)
    order = sorted((host for host in assignments if assignments[host]), key=lambda h: messages.index(assignments[h][0]))
    expected = {host: messages[k::n] for k, host in enumerate(order)}
    once = all(len(t["deliveries"]) == 1 for t in run["tasks"])
    holds = once and len(order) == min(n, len(messages)) and all(assignments[h] == expected[h] for h in order)
    hosts = order + sorted(h for h in assignments if not assignments[h])
    counts = " and ".join(str(len(assignments[h])) for h in hosts)
    detail = "; ".join(f"{rec.short(h)} got {_names(assignments[h])}" for h in hosts)
    detail += f" ({counts} of {len(messages)}; {'each delivered once' if once else 'some delivered more than once'})"
    return _verdict(CLAIMS["round-robin"], holds, detail)


# -- fair dispatch -------------------------------------------------------------------------------


def fair_dispatch(lab: Lab, options: Options) -> dict:
    """The heavy/light workload with unlimited prefetch, then with prefetch 1; makespans vs the lower bound."""
    n = options.workers
    workload = fair_workload(n)
    bound = rec.lower_bound(workload, lab.seconds_per_dot, n)
    result = _scenario(
        "fair-dispatch",
        f"Fair dispatch: heavy and light messages on {n} workers, unlimited prefetch vs prefetch 1",
        lab,
        options,
        lower_bound=bound,
    )
    for label, prefetch in (("unlimited prefetch", UNLIMITED), ("prefetch 1", FAIR)):
        workers = lab.ensure_workers(n, prefetch)
        run = run_messages(lab, f"fair-dispatch, {label}", workload, workers)
        run["label"], run["prefetch"] = label, prefetch
        run["makespan"], run["lower_bound"] = rec.makespan(run), bound
        run["busy"], run["idle"], run["peak_held"] = rec.busy(run), rec.idle(run), rec.peak_held(run)
        result["runs"].append(run)
    unlimited, fair = result["runs"]
    result["makespans"] = {"unlimited": unlimited["makespan"], "prefetch_1": fair["makespan"]}
    result["verdicts"] += fair_dispatch_verdicts(unlimited, fair, bound)
    return result


def fair_dispatch_verdicts(unlimited: dict, fair: dict, bound: float) -> list[dict]:
    heavy_hosts = {t["worker"] for t in unlimited["tasks"] if t["message"].startswith("Heavy")}
    busy = unlimited["busy"]
    hosts = sorted(busy, key=busy.get, reverse=True)
    problem = _verdict(
        CLAIMS["fair-dispatch-problem"],
        len(heavy_hosts) == 1,
        f"with unlimited prefetch {_who(heavy_hosts)} got every heavy message; busy "
        + ", ".join(f"{rec.short(h)} {busy[h]:.2f} s" for h in hosts)
        + f" of a {unlimited['makespan']:.2f} s makespan",
    )
    held = max(fair["peak_held"].values())
    faster = fair["makespan"] < unlimited["makespan"]
    fix = _verdict(
        CLAIMS["fair-dispatch"],
        faster and held == 1,
        f"makespan {fair['makespan']:.2f} s with prefetch 1 vs {unlimited['makespan']:.2f} s round-robin "
        "(unlimited prefetch); "
        f"lower bound {bound:.2f} s; no worker held more than {held} message{'s' if held != 1 else ''} at once "
        f"(with unlimited prefetch: {max(unlimited['peak_held'].values())})",
    )
    return [problem, fix]


def _who(hosts: set[str]) -> str:
    return " and ".join(sorted(rec.short(h) for h in hosts)) or "no worker"


# -- redelivery ----------------------------------------------------------------------------------


def redelivery(lab: Lab, options: Options) -> dict:
    """A long task's worker is killed mid-task; the message is redelivered (flagged) and completes."""
    target = "pool child" if options.kill == "pool-child" else "worker"
    signame = f"SIG{options.signal}"
    result = _scenario(
        "redelivery",
        f"Redelivery: {signame} to the {target} running a long task, {options.workers} workers with prefetch 1",
        lab,
        options,
    )
    result["settings"].update({"kill": options.kill, "signal": signame})
    # A pool child to kill: workers of the prefork pool (the default threads pool runs the task in a thread).
    workers = lab.ensure_workers(options.workers, FAIR, pool="prefork" if options.kill == "pool-child" else None)
    duration = LONG_TASK.count(".") * lab.seconds_per_dot

    def kill_mid_task(published: list[dict], marks: list[dict], progress) -> None:
        uuid = published[0]["uuid"]
        progress.phase = "waiting for the long task to start"
        lab.recorder.wait_for(lambda r: uuid in r.tasks and r.tasks[uuid].started, lab.timeout_for([LONG_TASK]))
        host, started = lab.recorder.tasks[uuid].started[0]
        runner = lab.by_hostname(host)
        progress.phase = f"the long task runs on {runner.name}"
        # The experiment's own clock, not a wait for something: the kill lands this far into the task.
        time.sleep(max(0.0, started + KILL_AT * duration - time.time()))
        if options.kill == "pool-child":
            children = runner.children()
            if not children:
                raise LabError(f"{runner.name} has no pool child to kill (pid {runner.pid})")
            pid = children[0]
        else:
            pid = runner.pid
        os.kill(pid, getattr(signal, signame))
        marks.append(
            {"kind": "kill", "at": time.time(), "worker": host, "pid": pid, "signal": signame, "target": target}
        )
        progress.phase = f"{signame} sent to {runner.name}'s {target}; waiting for the redelivery"

    run = run_messages(lab, "redelivery", [LONG_TASK], workers, during=kill_mid_task)
    result["runs"].append(run)
    result["verdicts"].append(redelivery_verdict(run, options))
    return result


def redelivery_verdict(run: dict, options: Options) -> dict:
    (task,) = run["tasks"]
    (kill,) = [m for m in run["marks"] if m["kind"] == "kill"]
    dels = task["deliveries"]
    first, later = (dels[0], dels[1:]) if dels else (None, [])
    done = [d for d in dels if d["outcome"] == "succeeded"]
    again = [d for d in later if d["redelivered"]]
    holds = (
        first is not None
        and first["worker"] == kill["worker"]
        and first["outcome"] != "succeeded"
        and len(done) == 1
        and bool(again)
        and done[0] is again[-1]
    )
    if options.kill != "pool-child":  # the killed worker is gone: only another consumer can have it
        holds = holds and done and done[0]["worker"] != kill["worker"]
    into = kill["at"] - first["started"] if first and first["started"] else 0.0
    victim = rec.short(kill["worker"]) + ("'s pool child" if kill["target"] == "pool child" else "")
    detail = f"{kill['signal']} to {victim} (pid {kill['pid']}) {into:.2f} s into {task['message']!r}"
    if again:
        d = again[-1]
        detail += (
            f"; {rec.short(d['worker'])} received it {d['received'] - kill['at']:.2f} s later with redelivered=True"
        )
        if done:
            detail += f" and finished it {done[0]['finished'] - run['t0']:.2f} s after it was sent"
    else:
        detail += "; no redelivery was seen"
    detail += "; completed once" if len(done) == 1 else f"; completed {len(done)} times"
    if options.kill == "pool-child":
        # The worker lives on: Celery's task_reject_on_worker_lost, not the broker, puts the message back.
        detail = "task_reject_on_worker_lost rejected it back to the queue: " + detail
    claim = CLAIMS["redelivery-child" if options.kill == "pool-child" else "redelivery"]
    return _verdict(claim, holds, detail)


# -- durability ----------------------------------------------------------------------------------

CANNOT_RESTART = (
    "durability restarts the broker, and the lab only restarts a broker it started itself: run it without --broker-url"
)


def durability(lab: Lab, options: Options) -> dict:
    """Enqueue with no worker running, restart the broker, compare queue depths, then drain."""
    result = _scenario(
        "durability",
        f"Durability: five messages enqueued with no worker, the broker restarted, then {options.workers} workers",
        lab,
        options,
    )
    if not lab.private:
        result["skipped"] = CANNOT_RESTART
        return result
    lab.stop_workers()
    lab.wait_until(lambda: lab.queue_state()[0] == 0, f"no consumer left on {config.QUEUE_NAME}")
    marks: list[dict] = []
    with lab.progress("durability", []) as progress:
        progress.phase = "publishing with no worker running"
        published = lab.publish(FIVE_MESSAGES)
        uuids = [p["uuid"] for p in published]
        progress.track(uuids)
        before = lab.queue_depth()
        progress.phase = f"{before} messages in {config.QUEUE_NAME}; restarting the broker"
        restart = lab.restart_broker()
        marks.append({"kind": "broker-restart", "at": restart["stopping_at"], "until": restart["ready_at"], **restart})
        after = lab.queue_depth()
        progress.phase = f"{after} messages in {config.QUEUE_NAME} after the restart; starting workers"
        workers = lab.start_workers(options.workers, FAIR)
        progress.phase = "draining"
        lab.wait_done("durability", uuids, lab.timeout_for(FIVE_MESSAGES))
        drained = lab.queue_depth()
        progress.phase = ""
    marks[0].update(depth_before=before, depth_after=after)
    run = lab.run_record("durability", published, workers, marks)
    run["queue_lane"] = True
    result["runs"].append(run)
    result["queue_depth"] = {"before_restart": before, "after_restart": after, "after_drain": drained}
    result["restart"] = restart
    n = len(FIVE_MESSAGES)
    done_after = [t for t in run["tasks"] if t["done"] and t["deliveries"][0]["received"] >= restart["ready_at"]]
    holds = before == n and after == n and len(done_after) == n and drained == 0
    detail = (
        f"{config.QUEUE_NAME} held {before} messages before the restart and {after} after it "
        f"(the broker was down for {restart['ready_at'] - restart['stopping_at']:.1f} s); "
        f"{len(done_after)} of {n} were then done by the workers started after it; {drained} left"
    )
    result["verdicts"].append(_verdict(CLAIMS["durability"], holds, detail))
    return result


SCENARIOS = {
    "round-robin": round_robin,
    "fair-dispatch": fair_dispatch,
    "redelivery": redelivery,
    "durability": durability,
}
