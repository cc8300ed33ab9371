"""The `accordion` command."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from accordion.cluster import Cluster, ClusterError
from accordion.config import ConfigError, load_config
from accordion.events import read_events
from accordion.paths import all_clusters

app = typer.Typer(
    help="Elastic HPC clusters: a real Slurm whose compute nodes are containers created when jobs wait "
    "and removed when idle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", "-c", help="Cluster name (default: the only cluster running, else 'accordion')."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise fail("accordion manages namespaces, cgroups and daemons: run it as root")


def _cluster_name(name: str | None) -> str:
    if name:
        return name
    if os.environ.get("ACCORDION_CLUSTER"):
        return os.environ["ACCORDION_CLUSTER"]
    running = all_clusters()
    return running[0] if len(running) == 1 else "accordion"


def _load(name: str | None) -> Cluster:
    try:
        return Cluster.load(_cluster_name(name))
    except ClusterError as exc:
        raise fail(str(exc)) from None


@app.command()
def up(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Cluster file (default: built-in, no file needed).")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Override the cluster name from the file.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the cluster to be ready.")] = 90.0,
) -> None:
    """Start a cluster and return once it is ready (its min_nodes nodes are up)."""
    _need_root()
    if file is None and Path("accordion.yaml").is_file():
        file = Path("accordion.yaml")
    try:
        config = load_config(file)
        if name is not None:
            config = config.model_copy(update={"name": name})
            config = type(config).model_validate(config.model_dump())
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except Exception as exc:  # pydantic re-validation of --name
        raise fail(f"--name: {name!r} is not allowed: use lower-case letters, digits and -, starting with a letter ({type(exc).__name__})", 2) from None
    try:
        cluster = Cluster(config)  # a provider refuses what it cannot run (the local one: > 1024 nodes)
    except ConfigError as exc:
        raise fail(f"{file or 'accordion.yaml'}: {exc}", 2) from None
    t0 = time.monotonic()
    try:
        with err.status(f"[bold]{config.name}[/]: starting") as status:
            cluster.up(lambda step: status.update(f"[bold]{config.name}[/]: {step}"))
    except OSError as exc:
        raise fail(f"{config.name}: {os_error_text(exc)}") from None
    except (ClusterError, RuntimeError) as exc:
        raise fail(f"{config.name}: {exc}") from None
    total = sum(ns.max_nodes for ns in config.nodesets)
    err.print(
        f"[green]✓[/] cluster [bold]{config.name}[/] up in {time.monotonic() - t0:.1f} s: "
        f"{config.scheduler}, {len(config.nodesets)} node set(s), up to {total} nodes. "
        f"Try `accordion shell -c {config.name}` then `sbatch`/`srun`."
    )


@app.command()
def down(
    cluster: ClusterOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Take down every cluster on this machine.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Remove the cluster here even if its nodes cannot be removed (e.g. the Kubernetes API is gone).")
    ] = False,
) -> None:
    """Stop everything: nodes, scheduler, controller, and remove the cluster's files."""
    _need_root()
    names = all_clusters() if all_ else [_cluster_name(cluster)]
    for name in names:
        c = _load(name)
        try:
            with err.status(f"[bold]{name}[/]: stopping") as status:
                c.down(lambda step: status.update(f"[bold]{name}[/]: stopping {step}"), force=force)
        except ClusterError as exc:
            raise fail(f"{name}: {exc}") from None
        err.print(f"[green]✓[/] cluster [bold]{name}[/] is down; nothing left behind")


def _ago(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def stale_after(c: Cluster) -> float:
    """Seconds after which the figures are stale although the controller runs.

    The controller rewrites its status at least every 2 s and every resync interval, after a step that can
    take a second or more on a busy machine (OAR's tools): a few intervals late means it is stuck."""
    return max(10.0, 5 * c.config.controller.resync_interval)


def status_document(c: Cluster, recent: int = 8) -> dict[str, Any]:
    st = c.status()
    ts = st.get("ts")
    age = max(0.0, time.time() - ts) if isinstance(ts, (int, float)) else None
    controller = c.controller_state()
    nodes = st.get("nodes", [])
    jobs = st.get("jobs", [])
    pins = st.get("pins", {})
    sets = []
    for ns in c.config.nodesets:
        mine = [n for n in nodes if n["nodeset"] == ns.name]
        counts: dict[str, int] = {}
        for n in mine:
            counts[n["state"]] = counts.get(n["state"], 0) + 1
        pending = [j for j in jobs if j["nodeset"] == ns.name and j.get("waiting", not j["running"])]
        sets.append(
            {
                "name": ns.name,
                "max_nodes": ns.max_nodes,
                "min_nodes": ns.min_nodes,
                "cpus": ns.cpus,
                "memory_mb": ns.memory_mb,
                "idle_timeout": ns.idle_timeout,
                "scaling": f"pinned to {pins[ns.name]}" if ns.name in pins else "auto",
                "nodes": {k: counts.get(k, 0) for k in ("starting", "idle", "busy", "unresponsive", "draining", "held", "failed", "absent")},
                "node_states": {n["name"]: n["state"] for n in mine if n["state"] != "absent"},
                "running_jobs": sum(1 for j in jobs if j["nodeset"] == ns.name and j["running"]),
                "pending_jobs": sum(j.get("count", 1) for j in pending),
                "pending_cpus": sum(j.get("count", 1) * j["nodes"] * j["cpus_per_node"] for j in pending),
                "pending_reasons": sorted({j["reason"] for j in pending}),
                # Names out of use, and why: drained by an administrator or the scheduler, or failed starts.
                "held": {n: r for n, r in st.get("held", {}).items() if n in ns.node_names()},
                "failures": {n: f for n, f in st.get("failures", {}).items() if n in ns.node_names()},
            }
        )
    events = list(read_events(c.paths.events))[-recent:]
    return {
        "cluster": c.config.name,
        "scheduler": c.config.scheduler,
        "provider": c.config.provider,
        "controller": controller,
        "supervisor": "running" if c.supervisor_pid() else "dead",
        "metrics": c.metrics_url(),
        "updated": ts,
        "age": None if age is None else round(age, 1),
        # Figures nobody updates any more: a job long finished may still show as waiting.
        "stale": age is None or controller != "running" or age > stale_after(c),
        "nodesets": sets,
        "events": events,
    }


@app.command()
def status(
    cluster: ClusterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (schema: docs/status-schema.json).")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until interrupted.")] = False,
) -> None:
    """Node sets, nodes and their states, queue summary and recent events."""
    c = _load(cluster)
    if as_json:
        out.print_json(json.dumps(status_document(c)))
        return
    if not watch:
        out.print(_status_view(status_document(c)))
        return
    from rich.live import Live

    with Live(_status_view(status_document(c)), console=out, refresh_per_second=2, screen=False) as live:
        try:
            while True:
                time.sleep(1)
                live.update(_status_view(status_document(c)))
        except KeyboardInterrupt:
            pass


def _status_view(doc: dict[str, Any]) -> Group:
    again = f"`accordion up -c {doc['cluster']}`"
    ctl = {
        "running": "[green]running[/]" if doc["supervisor"] == "running" else f"[yellow]running, unsupervised[/] ({again} restarts its supervisor)",
        "restarting": "[yellow]restarting[/]",
        "dead": f"[red]dead[/] ({again} starts it again)",
    }[doc["controller"]]
    if doc["updated"] is None:
        figures = "[yellow]no figures yet[/]"
    else:
        figures = f"updated {_ago(doc['updated'])} ago" + (", [yellow]stale[/]" if doc["stale"] else "")
    parts: list[RenderableType] = [f"[bold]{doc['cluster']}[/] ({doc['scheduler']} on {doc['provider']}), controller {ctl}, {figures}"]
    table = Table("set", "scaling", "max", "start", "idle", "busy", "drain", "fail", "run", "wait", "CPUs wait")
    for s in doc["nodesets"]:
        n = s["nodes"]
        table.add_row(
            s["name"], s["scaling"], str(s["max_nodes"]), str(n["starting"]), str(n["idle"]), str(n["busy"]),
            str(n["draining"]), str(n["failed"]), str(s["running_jobs"]), str(s["pending_jobs"]), str(s["pending_cpus"]),
        )
    parts.append(table)
    for s in doc["nodesets"]:
        if s["node_states"]:
            parts.append(f"  {s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["node_states"].items()))
        if s["pending_reasons"]:
            parts.append(f"  {s['name']} waiting: " + "; ".join(s["pending_reasons"]))
    if doc["events"]:
        parts.append("[bold]recent events[/]")
        parts += [Text("  " + _format_event(e)) for e in doc["events"]]
    return Group(*parts)


def _format_event(e: dict[str, Any]) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(float(e["ts"])))
    parts = [ts, str(e["kind"]).ljust(10), str(e.get("node", ""))]
    if e.get("reason"):
        parts.append(f"({e['reason']})")
    return " ".join(p for p in parts if p)


_SINCE = re.compile(r"^(\d+)([smhd])$")


def _since(since: str | None) -> float:
    if not since:
        return 0.0
    m = _SINCE.match(since)
    if not m:
        raise fail(f"--since: {since!r} is not a duration like 30s, 10m, 2h or 1d", 2)
    return time.time() - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    cluster: ClusterOpt = None,
    since: Annotated[str | None, typer.Option(help="Only the last period, e.g. 1h, 30m (default: everything).")] = None,
) -> None:
    """An HTML report: demand, provisioned and busy nodes over time, scale events, provisioning latency."""
    from accordion.report import build

    c = _load(cluster)
    page = build(c.config.name, [ns.name for ns in c.config.nodesets], c.paths.state, _since(since))
    try:
        output.write_text(page)
    except OSError as exc:
        raise fail(f"--output: cannot write {output}: {exc.strerror}", 2) from None
    err.print(f"[green]✓[/] report written to {output}")


@app.command()
def events(
    cluster: ClusterOpt = None,
    since: Annotated[str | None, typer.Option(help="Only events newer than this, e.g. 10m, 2h, 30s.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
) -> None:
    """Print the event log (node requested/started/registered/idle/busy/draining/removed/failed)."""
    c = _load(cluster)
    start = _since(since)
    seen = 0
    while True:
        evs = list(read_events(c.paths.events, start))
        for e in evs[seen:]:
            out.print(json.dumps(e) if as_json else _format_event(e), highlight=False, soft_wrap=True)
        seen = len(evs)
        if not follow:
            return
        time.sleep(0.5)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def shell(
    ctx: typer.Context,
    cluster: ClusterOpt = None,
) -> None:
    """A shell (or, after `--`, one command) where sbatch/squeue/sinfo/srun talk to this cluster."""
    _need_root()
    c = _load(cluster)
    if not c.scheduler.running():
        raise fail(f"cluster {c.config.name!r} is not running; `accordion up` first")
    env = os.environ | c.scheduler.env() | {"ACCORDION_CLUSTER": c.config.name}
    cmd = list(ctx.args)
    if not cmd:
        env["PS1"] = f"({c.config.name}) \\w \\$ "
        cmd = ["bash", "--norc", "-i"]
        err.print(f"cluster [bold]{c.config.name}[/]: sbatch, squeue, sinfo, srun work here; shared dir {c.paths.shared}; exit to leave")
    os.chdir(c.paths.shared)
    argv = c.provider.enter() + c.scheduler.wrap() + cmd
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


@app.command()
def scale(
    nodeset: Annotated[str, typer.Argument(help="Node set name.")],
    count: Annotated[int | None, typer.Argument(help="Number of nodes to keep.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Give the node set back to automatic scaling.")] = False,
    cluster: ClusterOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the node set to reach the count (0: do not wait).")] = 60.0,
) -> None:
    """Pin a node set to COUNT nodes by hand; `--auto` gives it back to the controller."""
    _need_root()
    from accordion.controller import read_pins, write_pins

    c = _load(cluster)
    try:
        ns = c.config.nodeset(nodeset)
    except KeyError:
        raise fail(f"NODESET: no node set {nodeset!r}; this cluster has: {', '.join(n.name for n in c.config.nodesets)}", 2) from None
    if auto == (count is not None):
        raise fail("give either COUNT or --auto", 2)
    pins = read_pins(c.paths)
    if auto:
        pins.pop(nodeset, None)
        write_pins(c.paths, pins)
        c.events.emit("scaled", nodeset=nodeset, reason="automatic scaling")
        err.print(f"[green]✓[/] {nodeset}: automatic scaling")
        return
    assert count is not None
    if not 0 <= count <= ns.max_nodes:
        raise fail(f"COUNT: {count} is outside 0..{ns.max_nodes} (the node set's max_nodes)", 2)
    pins[nodeset] = count
    write_pins(c.paths, pins)
    c.events.emit("scaled", nodeset=nodeset, reason=f"pinned to {count} by hand")
    if wait <= 0:
        return
    deadline = time.monotonic() + wait
    with err.status(f"{nodeset}: scaling to {count}") as st:
        while time.monotonic() < deadline:
            doc = c.status()
            states = [n["state"] for n in doc.get("nodes", []) if n["nodeset"] == nodeset]
            up_ = sum(s in ("idle", "busy") for s in states)
            moving = sum(s in ("starting", "draining") for s in states)
            st.update(f"{nodeset}: {up_}/{count} nodes up, {moving} starting or draining")
            if up_ == count and moving == 0 and float(doc.get("ts", 0)) > time.time() - 5:
                err.print(f"[green]✓[/] {nodeset}: {count} node(s)")
                return
            time.sleep(0.2)
    err.print(f"[yellow]![/] {nodeset}: not yet at {count} nodes (busy nodes are removed only once their jobs end); see `accordion status`")


@app.command("list")
def list_() -> None:
    """Clusters on this machine."""
    for name in all_clusters():
        c = _load(name)
        out.print(f"{name}\tcontroller {c.controller_state()}")


@app.command(hidden=True)
def controller(cluster: ClusterOpt = None) -> None:
    """Run the controller loop in the foreground (the supervisor `accordion up` starts runs it in the background)."""
    from accordion.controller import Controller, serve
    from accordion.logs import setup_logging
    from accordion.metrics import Metrics
    from accordion.supervisor import take_controller_lock

    log = logging.getLogger("accordion.controller")
    c = _load(cluster)
    setup_logging(c.config.name, c.config.controller.log_format)
    try:
        # Before anything is served or written: a second controller changes nothing.
        take_controller_lock(c.paths)
    except ClusterError as exc:
        raise fail(str(exc)) from None
    metrics = Metrics(c.config.name)
    port = metrics.serve(c.config.controller.metrics_port)
    (c.paths.run / "metrics.port").write_text(f"{port}\n")
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    serve(Controller(c.config, c.paths, c.scheduler, c.provider, c.events, metrics=metrics))


@app.command(hidden=True)
def supervise(cluster: ClusterOpt = None) -> None:
    """Keep the controller running, starting it again whenever it exits (`accordion up` starts this in the background)."""
    from accordion.logs import setup_logging
    from accordion.supervisor import Supervisor

    c = _load(cluster)
    setup_logging(c.config.name, c.config.controller.log_format)
    Supervisor(c.controller_argv(), c.paths, c.events).run()


def main() -> None:
    try:
        app()
    except OSError as exc:
        # A full disk or a read-only state directory: one line naming the file, no traceback. Writes
        # are atomic (store.write_json), so what was there before is intact.
        err.print(f"[bold red]error:[/] {os_error_text(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)


def os_error_text(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)



def _advance(progress: Progress, task: TaskID, done: int) -> None:
    progress.update(task, completed=done)

@app.command()
def simulate(
    trace: Annotated[Path, typer.Argument(help="Job log: SWF (plain or .gz) or a `sacct --parsable2` export.", show_default=False)],
    policy: Annotated[str, typer.Option("--policy", "-p", help="Comma-separated policies: static, chsc, powersave, accordion.")] = "static,chsc,powersave,accordion",
    nodes: Annotated[int | None, typer.Option(help="Max nodes (default: the trace header's MaxNodes).")] = None,
    cpus_per_node: Annotated[int | None, typer.Option(help="CPUs per node (default: MaxProcs // MaxNodes).")] = None,
    min_nodes: Annotated[int, typer.Option(help="Nodes elastic policies keep up.")] = 0,
    boot_time: Annotated[float, typer.Option(help="Seconds from starting a node to running jobs on it (measured cold start).")] = 0.8,
    stop_time: Annotated[float, typer.Option(help="Seconds a removed node takes to disappear.")] = 0.2,
    idle_timeout: Annotated[float | None, typer.Option(help="Idle seconds before the accordion policy removes a node (default 60, the live default).")] = None,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N jobs.")] = None,
    start_day: Annotated[float, typer.Option(help="Skip the jobs submitted in the first D days.")] = 0.0,
    days: Annotated[float | None, typer.Option(help="Replay only jobs submitted within D days from --start-day.")] = None,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="Count and skip malformed lines instead of stopping.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write an HTML report (charts over time, wait distributions) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """What if this job log had run on an elastic cluster? Replay it under scaling policies, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from accordion.simulator.metrics import summarize
    from accordion.simulator.policies import POLICIES
    from accordion.simulator.report import ROWS, fmt, workload_lines, write_report
    from accordion.simulator.traces import TraceError
    from accordion.simulator.workload import prepare, run_policy

    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise fail(f"--policy: unknown policy {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICIES)}", 2)
    checks = [
        (nodes is None or nodes > 0, "--nodes must be positive"),
        (cpus_per_node is None or cpus_per_node > 0, "--cpus-per-node must be positive"),
        (min_nodes >= 0 and (nodes is None or min_nodes <= nodes), "--min-nodes must be between 0 and --nodes"),
        (boot_time >= 0 and stop_time >= 0, "--boot-time and --stop-time cannot be negative"),
        (idle_timeout is None or idle_timeout >= 0, "--idle-timeout cannot be negative"),
        (limit is None or limit > 0, "--limit must be positive"),
        (start_day >= 0 and (days is None or days > 0), "--start-day cannot be negative and --days must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise fail(message, 2)
    if report is not None and not report.parent.is_dir():
        raise fail(f"--report: directory {report.parent} does not exist", 2)
    try:
        with err.status(f"reading {trace}"):
            work = prepare(trace, nodes, cpus_per_node, start_day, days, limit, skip_bad_lines,
                           min_nodes=min_nodes, boot_time=boot_time, stop_time=stop_time)
    except TraceError as exc:
        raise fail(str(exc)) from None
    if work.cluster.min_nodes > work.cluster.max_nodes:
        raise fail(f"--min-nodes {min_nodes} is more than the cluster's {work.cluster.max_nodes} nodes", 2)
    if not work.jobs:
        raise fail(f"{trace}: no job to replay (check --start-day/--days/--limit)")
    runs = []
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=len(work.jobs) < 5000) as progress:
        for name in names:
            task = progress.add_task(name, total=len(work.jobs))
            runs.append(run_policy(work, name, idle_timeout if name == "accordion" else None, partial(_advance, progress, task)))
    metrics = [summarize(r) for r in runs]
    if report is not None:
        try:
            write_report(report, work, runs, metrics)
        except OSError as exc:
            raise fail(f"--report: cannot write {report}: {exc.strerror}") from None
    if as_json:
        doc = {"workload": workload_lines(work), "policies": {m.policy: m.as_dict() for m in metrics}}
        out.print_json(json.dumps(doc))
        return
    for line in workload_lines(work):
        err.print(line, highlight=False)
    table = Table("", *names, title="per policy")
    for key, label, unit in ROWS:
        table.add_row(label, *(fmt(getattr(m, key), unit) for m in metrics))
    out.print(table)
    if report is not None:
        err.print(f"[green]✓[/] report written to {report}")
