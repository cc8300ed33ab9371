"""The `accordion` command."""

from __future__ import annotations

import atexit
import json
import logging
import os
import pwd
import shutil
import stat
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from accordion.cluster import Cluster, ClusterError
from accordion.config import ConfigError, load_config
from accordion.errors import AccordionError, SchedulerError
from accordion.events import read_events
from accordion.paths import ClusterPaths, all_clusters
from accordion.sh import CommandError
from accordion.units import parse_duration

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
    typer.Option(
        "--cluster", "-c",
        help="Cluster name (default: the cluster of ./accordion.yaml, else the only cluster running, else 'accordion').",
    ),
]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="The cluster named in this cluster file (as `up -f`).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise fail("accordion manages namespaces, cgroups and daemons: run it as root")


def _file_name(file: Path) -> str:
    """The cluster a cluster file names (its `name`, else the default one `up -f` would use)."""
    try:
        return load_config(file).name
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def _cluster_name(name: str | None, file: Path | None = None) -> str:
    """-c NAME, else -f FILE, else the cluster of the shell we are in, else ./accordion.yaml (as compose
    does), else the only cluster running, else the default name."""
    if name and file:
        raise fail("give either --cluster or --file, not both", 2)
    if name:
        try:
            return ClusterPaths(name).name
        except ConfigError as exc:
            raise fail(f"--cluster: {exc}", 2) from None
    if file is not None:
        return _file_name(file)
    if os.environ.get("ACCORDION_CLUSTER"):
        return os.environ["ACCORDION_CLUSTER"]
    if Path("accordion.yaml").is_file():
        return _file_name(Path("accordion.yaml"))
    running = all_clusters()
    return running[0] if len(running) == 1 else "accordion"


def _load(name: str | None, file: Path | None = None) -> Cluster:
    try:
        return Cluster.load(_cluster_name(name, file))
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
    except (AccordionError, RuntimeError) as exc:  # a provider's setup fails with ProviderError
        raise fail(f"{config.name}: {exc}") from None
    total = sum(ns.max_nodes for ns in config.nodesets)
    err.print(
        f"[green]✓[/] cluster [bold]{config.name}[/] up in {time.monotonic() - t0:.1f} s: "
        f"{config.scheduler}, {len(config.nodesets)} node set(s), up to {total} nodes. "
        f"Try `accordion shell -c {config.name}` then {_commands(cluster)}."
    )


def _commands(c: Cluster) -> str:
    return "/".join(f"`{cmd}`" for cmd in c.scheduler.user_commands[:2])


@app.command()
def down(
    cluster: ClusterOpt = None,
    file: FileOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Take down every cluster on this machine.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Remove the cluster here even if its nodes cannot be removed (e.g. the Kubernetes API is gone).")
    ] = False,
    keep_data: Annotated[
        bool, typer.Option("--keep-data", help="Keep the job accounting database; the next `up` of this name finds its history again.")
    ] = False,
) -> None:
    """Stop everything: nodes, scheduler, controller, and remove the cluster's files."""
    _need_root()
    names = all_clusters() if all_ else [_cluster_name(cluster, file)]
    for name in names:
        paths = ClusterPaths(name)
        if not all_ and not keep_data and paths.state.is_dir() and not paths.config.exists():
            # Only the records a `down --keep-data` kept: this is how they are deleted. Anything else there is
            # not a cluster's, and is left alone.
            if {p.name for p in paths.state.iterdir()} != {paths.records.name}:
                raise fail(f"{paths.state} holds no cluster and no kept records of one: nothing deleted")
            shutil.rmtree(paths.state)
            err.print(f"[green]✓[/] cluster [bold]{name}[/] was down; its kept records are deleted")
            continue
        c = _load(name)
        try:
            with err.status(f"[bold]{name}[/]: stopping") as status:
                c.down(lambda step: status.update(f"[bold]{name}[/]: stopping {step}"), force=force, keep_data=keep_data)
        except ClusterError as exc:
            raise fail(f"{name}: {exc}") from None
        kept = [str(p) for p in c.scheduler.data() if p.exists()] if keep_data else []
        if kept:
            err.print(f"[green]✓[/] cluster [bold]{name}[/] is down; its records are kept in {', '.join(kept)}")
        else:
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
        # provider hosts: each host's health (up, not answering, lost), capacity and nodes.
        **({"hosts": health()} if (health := getattr(c.provider, "host_health", None)) else {}),
    }


@app.command()
def status(
    cluster: ClusterOpt = None,
    file: FileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (schema: docs/status-schema.json).")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until interrupted.")] = False,
) -> None:
    """Node sets, nodes and their states, queue summary and recent events."""
    c = _load(cluster, file)
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
    # Fits an 80-column terminal whole (tests/test_status.py checks it in tmux): no vertical rules, one-word
    # headers that never fold; node set names (up to 20 characters) fold rather than the figures.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, padding=(0, 1))
    table.add_column("node set", overflow="fold", min_width=8)
    table.add_column("scaling", no_wrap=True)
    for header in ("max", "start", "idle", "busy", "drain", "fail", "jobs", "wait", "cpus"):
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for s in doc["nodesets"]:
        n = s["nodes"]
        table.add_row(
            s["name"], s["scaling"].replace("pinned to", "pinned"), str(s["max_nodes"]), str(n["starting"]), str(n["idle"]),
            str(n["busy"]), str(n["draining"]), str(n["failed"]), str(s["running_jobs"]), str(s["pending_jobs"]), str(s["pending_cpus"]),
        )
    parts.append(table)
    parts.append(Text("jobs: jobs running; wait: jobs waiting; cpus: CPUs they wait for", style="dim"))
    for s in doc["nodesets"]:
        if s["node_states"]:
            parts.append(f"  {s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["node_states"].items()))
        if s["pending_reasons"]:
            parts.append(f"  {s['name']} waiting: " + "; ".join(s["pending_reasons"]))
    for name, h in doc.get("hosts", {}).items():
        parts.append(f"  host {name}: {h.get('state', 'unknown')}, nodes: {', '.join(h.get('nodes', [])) or 'none'}" + (f" ({h['error']})" if h.get("error") else ""))
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


def _since(since: str | None) -> float:
    if not since:
        return 0.0
    try:
        return time.time() - parse_duration(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}", 2) from None


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    cluster: ClusterOpt = None,
    file: FileOpt = None,
    since: Annotated[str | None, typer.Option(help="Only the last period, e.g. 1h, 30m (default: everything).")] = None,
) -> None:
    """An HTML report: demand, provisioned and busy nodes over time, scale events, provisioning latency."""
    from accordion.report import build

    c = _load(cluster, file)
    page = build(c.config.name, [ns.name for ns in c.config.nodesets], c.paths.state, _since(since))
    try:
        output.write_text(page)
    except OSError as exc:
        raise fail(f"--output: cannot write {output}: {exc.strerror}", 2) from None
    err.print(f"[green]✓[/] report written to {output}")


@app.command()
def events(
    cluster: ClusterOpt = None,
    file: FileOpt = None,
    since: Annotated[str | None, typer.Option(help="Only events newer than this, e.g. 10m, 2h, 30s.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON lines.")] = False,
) -> None:
    """Print the event log (node requested/started/registered/idle/busy/draining/removed/failed)."""
    c = _load(cluster, file)
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
    file: FileOpt = None,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Open it as this ordinary user of the host: jobs run as them, files are theirs."),
    ] = None,
) -> None:
    """The cluster's login node: a shell (or, after `--`, one command) where the scheduler's commands talk
    to this cluster, on a host name of its own (`<cluster>-login`) that every node reaches."""
    if os.geteuid() != 0:
        # Entering the cluster's namespaces takes root; the shell itself then runs as the user.
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise fail(f"a login shell is opened by root: `sudo accordion shell --user {me}` (an administrator can allow exactly that command in sudoers)")
    c = _load(cluster, file)
    if not c.scheduler.running():
        raise fail(f"cluster {c.config.name!r} is not running; `accordion up` first")
    account = _account(user)
    cmd = list(ctx.args)
    commands = ", ".join(c.scheduler.user_commands)
    if account.pw_uid == 0:
        env = os.environ | c.scheduler.env()
        workdir = c.paths.shared
    else:
        try:
            c.scheduler.user_added(account.pw_name)
        except (CommandError, RuntimeError) as exc:
            raise fail(f"--user: {account.pw_name} could not be added to the cluster's accounting: {exc}") from None
        env = _user_env(account) | c.scheduler.env()
        workdir = own_dir(c.paths.shared, account)
    env["ACCORDION_CLUSTER"] = c.config.name
    if not cmd:
        env["PS1"] = f"({c.config.name}) \\u@\\h \\w \\$ "
        cmd = ["bash", "--norc", "-i"]
        err.print(f"cluster [bold]{c.config.name}[/]: {commands} work here; shared dir {workdir}; exit to leave")
    os.chdir(workdir)
    drop = [] if account.pw_uid == 0 else [
        # Every id and group of the user, no capability: from here on nothing runs as root.
        "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--inh-caps=-all", "--",
    ]
    argv = c.provider.login() + c.scheduler.wrap() + drop + cmd
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def own_dir(shared: Path, account: pwd.struct_passwd) -> Path:
    """The user's own directory in the cluster's shared one, made theirs if new: what they and their jobs
    write there is theirs. The shared directory is open to all (mode 1777): a directory or link someone
    else made under that name first is refused, or their shell and jobs would work in it."""
    workdir = shared / account.pw_name
    try:
        workdir.mkdir(mode=0o755)
        # Root's, in a sticky directory: no one else can move it away before it is handed over.
        os.chown(workdir, account.pw_uid, account.pw_gid, follow_symlinks=False)
    except FileExistsError:
        pass
    st = os.lstat(workdir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != account.pw_uid:
        raise fail(f"--user: {workdir} is not {account.pw_name}'s own directory (a {'directory' if stat.S_ISDIR(st.st_mode) else 'link or file'} of uid {st.st_uid}); remove it and try again")
    return workdir


def _account(user: str | None) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user) if user else pwd.getpwuid(0)
    except KeyError:
        raise fail(f"--user: no user {user!r} on this machine (nodes share the host's accounts: `useradd` it first)", 2) from None


def _user_env(account: pwd.struct_passwd) -> dict[str, str]:
    """A fresh login environment: nothing of root's (PYTHONPATH, credentials in variables) reaches the user."""
    env = {k: v for k, v in os.environ.items() if k in ("TERM", "LANG", "TZ", "COLORTERM") or k.startswith("LC_")}
    return env | {
        "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name, "SHELL": account.pw_shell or "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }


@app.command()
def scale(
    nodeset: Annotated[str, typer.Argument(help="Node set name.")],
    count: Annotated[int | None, typer.Argument(help="Number of nodes to keep.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Give the node set back to automatic scaling.")] = False,
    cluster: ClusterOpt = None,
    file: FileOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the node set to reach the count (0: do not wait).")] = 60.0,
) -> None:
    """Pin a node set to COUNT nodes by hand; `--auto` gives it back to the controller."""
    _need_root()
    from accordion.controller import read_pins, write_pins

    c = _load(cluster, file)
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


@app.command()
def agent(
    host: Annotated[str, typer.Option("--host", help="This host's name in the cluster file's hosts.")],
    address: Annotated[str, typer.Option("--address", help="This host's address in the cluster file (where the agent listens).")],
    port: Annotated[int, typer.Option("--port", help="TCP port of the agent.")] = 7471,
    install: Annotated[Path | None, typer.Option("--install", help="Install the certificate bundle made by `accordion enrol`, then exit.")] = None,
    announce: Annotated[bool, typer.Option("--announce/--no-announce", help="Announce this agent with DNS-SD on the interface of --address.")] = True,
    cluster: Annotated[str | None, typer.Option("--cluster", "-c", help="The cluster this host serves.")] = None,
    file: FileOpt = None,
) -> None:
    """Run this host's agent for provider `hosts` (its first run says how to enrol the host)."""
    from accordion.providers import agent as host_agent

    _need_root()
    if cluster is None and file is None:
        raise fail("--cluster or --file: which cluster this host serves", 2)
    cluster = _cluster_name(cluster, file)
    if install is not None:
        try:
            host_agent.install_bundle(cluster, install.read_bytes())
        except ConfigError as exc:
            raise fail(str(exc)) from None
        err.print(f"host {host} enrolled in cluster {cluster}")
        return
    if not host_agent.enrolled(cluster):
        err.print(host_agent.enrolment_help(cluster, host), highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host_agent.run_agent(cluster, host, address, port, announce)


@app.command()
def enrol(
    host: Annotated[str, typer.Argument(help="The host's name in the cluster file.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="The cluster file.")],
    csr: Annotated[Path, typer.Option("--csr", help="The signing request `accordion agent` made on the host.")],
    address: Annotated[str | None, typer.Option("--address", help="The address of a host to be discovered (not in the cluster file).")] = None,
) -> None:
    """On the head: sign a host's request with the cluster's CA; prints the bundle for `accordion agent --install`."""
    import ipaddress

    from accordion.providers import agent as host_agent

    _need_root()
    try:
        where = None if address is None else ipaddress.IPv4Address(address)
        sys.stdout.buffer.write(host_agent.sign_host(load_config(file), host, csr.read_bytes(), where))
    except ValueError as exc:
        raise fail(f"--address: {exc}") from None
    except ConfigError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    try:
        app()
    except AccordionError as exc:
        # The one family of expected failures (errors.py), caught here once: one line, no traceback. Commands
        # catch it earlier only to add what they know (the cluster's name, a usage exit code).
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as exc:
        # A full disk or a read-only state directory: one line naming the file, no traceback. Writes
        # are atomic (store.write_json), so what was there before is intact.
        err.print(f"[bold red]error:[/] {os_error_text(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)


def os_error_text(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)



def _own_history(name: str, nodes: int | None, cpus_per_node: int | None) -> tuple[Path, int, int]:
    """The cluster's accounting as a job log, and its size (all its node sets' nodes, their largest CPU count)
    unless given: read through the same reader as an exported file."""
    import tempfile

    c = _load(name)
    try:
        text = c.scheduler.history()
    except (SchedulerError, CommandError) as exc:
        raise fail(f"--cluster: {exc}") from None
    fd, path = tempfile.mkstemp(prefix=f"{name}-accounting-", suffix=".sacct")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    atexit.register(os.unlink, path)
    sets = c.config.nodesets
    return Path(path), nodes or sum(ns.max_nodes for ns in sets), cpus_per_node or max(ns.cpus for ns in sets)


def _advance(progress: Progress, task: TaskID, done: int) -> None:
    progress.update(task, completed=done)

@app.command()
def simulate(
    trace: Annotated[
        Path | None, typer.Argument(help="Job log: SWF (plain or .gz) or a `sacct --parsable2` export.", show_default=False)
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", "-c", help="Replay this running cluster's own accounting history instead of a file.")
    ] = None,
    file: FileOpt = None,
    policy: Annotated[str, typer.Option("--policy", "-p", help="Comma-separated policies: static, chsc, powersave, accordion.")] = "static,chsc,powersave,accordion",
    nodes: Annotated[int | None, typer.Option(help="Max nodes (default: the trace header's MaxNodes).")] = None,
    cpus_per_node: Annotated[int | None, typer.Option(help="CPUs per node (default: MaxProcs // MaxNodes).")] = None,
    min_nodes: Annotated[int, typer.Option(help="Nodes elastic policies keep up.")] = 0,
    boot_time: Annotated[float | None, typer.Option(help="Seconds from starting a node to running jobs on it (default: the measured cold start, 0.15 s).")] = None,
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

    if (trace is None) == (cluster is None and file is None):
        raise fail("give a job log file, or the cluster whose history to replay (--cluster NAME or --file FILE)", 2)
    if trace is None:
        trace, nodes, cpus_per_node = _own_history(_cluster_name(cluster, file), nodes, cpus_per_node)
    assert trace is not None
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise fail(f"--policy: unknown policy {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICIES)}", 2)
    checks = [
        (nodes is None or nodes > 0, "--nodes must be positive"),
        (cpus_per_node is None or cpus_per_node > 0, "--cpus-per-node must be positive"),
        (min_nodes >= 0 and (nodes is None or min_nodes <= nodes), "--min-nodes must be between 0 and --nodes"),
        ((boot_time is None or boot_time >= 0) and stop_time >= 0, "--boot-time and --stop-time cannot be negative"),
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
            given = {"boot_time": boot_time} if boot_time is not None else {}  # else ClusterModel's default
            work = prepare(trace, nodes, cpus_per_node, start_day, days, limit, skip_bad_lines,
                           min_nodes=min_nodes, stop_time=stop_time, **given)
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
