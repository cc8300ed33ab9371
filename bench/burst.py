"""A burst on a live Accordion Slurm cluster from zero nodes: N one-node jobs released at once, then the
scale-down after the idle timeout; optionally the thesis' run (ch. 9) on the N nodes.

Times from releasing the jobs (submitted held, released by one `scontrol release`) until all N run, counts
failed starts, reports each node's registration latency (request -> registered, median and p95) along the
burst, then times from the last job's end until no node is left (idle timeout included, and subtracted).
With --thesis, on the N nodes still up: `srun -N<N> hostname`, then N one-node MPI pi jobs (examples/pi.c),
with the node containers' memory (cgroup memory.current: median per node and total).

    python bench/burst.py [--nodes 280] [--idle-timeout 5] [--workers 8] [--thesis]

Heavy: N node containers on this machine. Bounded: every wait gives up after --deadline seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from accordion.units import percentile

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def accordion(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "accordion", *args], check=True, capture_output=True, text=True).stdout


def cpu_busy() -> float:
    """CPU seconds this machine has spent busy (every core, every process) since it booted: /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]  # then steal (the hypervisor's), guests (in user)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=280)
    ap.add_argument("--idle-timeout", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=8, help="controller.workers: starts and deletes at once (its default)")
    ap.add_argument("--thesis", action="store_true", help="also srun -N<nodes> hostname and <nodes> MPI pi jobs")
    ap.add_argument("--deadline", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="when the bench gives up, leave the cluster up to look at it "
                    "(remove it with `accordion down -c NAME`)")
    args = ap.parse_args()
    n = args.nodes

    name = f"burst-{uuid.uuid4().hex[:4]}"
    cfg = Path(f"/tmp/{name}.yaml")
    ns = {"name": "compute", "name_base": "n", "max_nodes": n, "cpus": 1, "memory_mb": 256, "idle_timeout": args.idle_timeout}
    cfg.write_text(yaml.safe_dump({"name": name, "nodesets": [ns], "controller": {"workers": args.workers}}))
    accordion("up", "-f", str(cfg))
    shared = Path("/srv/accordion") / name
    shared.chmod(0o1777)
    nodes_dir = Path("/run/accordion") / name / "nodes"

    def node_dirs() -> list[Path]:
        """The nodes' directories, not the one prepared for the next start (providers/local.py, PREPARED)."""
        return [d for d in nodes_dir.iterdir() if not (d / "prepared").exists()] if nodes_dir.is_dir() else []
    events = Path("/var/lib/accordion") / name / "events.jsonl"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from accordion.cluster import Cluster

    cluster = Cluster.load(name)
    env = os.environ | cluster.scheduler.env()
    enter = cluster.provider.enter()

    def sh(script: str, timeout: float = 120) -> str:
        return subprocess.run(enter + ["bash", "-c", script], env=env, check=True, capture_output=True, text=True, timeout=timeout).stdout

    def wait(what: str, done, every: float = 0.2) -> float:  # noqa: ANN001
        t0 = time.monotonic()
        while not done():
            if time.monotonic() - t0 > args.deadline:
                raise SystemExit(f"{what}: not reached within {args.deadline:.0f} s")
            time.sleep(every)
        return time.monotonic() - t0

    def running() -> int:
        return int(sh("squeue -h -t R | wc -l").strip())

    requeued: set[str] = set()

    def all_running() -> bool:
        """All n jobs run. A job that ended first (it failed as it started) is reported, not waited for; nor
        is one its node's guard requeued (slurmd deleted its script as it started), which waits out Slurm's
        requeue delay (120 s): it is named and counted apart."""
        rows = [line.split(maxsplit=2) for line in sh("squeue -h -o '%i %T %r'").splitlines()]
        if len(rows) < n:
            ended = sh("sacct -X -n -P -r compute -S now-1hours -o JobID,State,ExitCode,NodeList,Start,End "
                       "| grep -v '|RUNNING|' || true")
            raise SystemExit(f"{n - len(rows)} of the {n} jobs ended before all ran (JobID|State|ExitCode|NodeList|Start|End):\n{ended}")
        # Released jobs have no begin time of their own: BeginTime is the requeue delay.
        requeued.update(job for job, state, reason in rows if state == "PENDING" and reason == "BeginTime")
        return sum(state == "RUNNING" for _, state, _ in rows) + len(requeued) >= n

    seen_busy: set[str] = set()
    read = {"offset": 0, "asked": 0.0}

    def all_running_asked_rarely() -> bool:
        """`all_running`, asked of Slurm once the controller has seen every node busy (its event log, read
        as it grows: no command), and every 2 s meanwhile to catch a job that ended; the end is then seen at the
        controller's step that sees the last node busy, a little after Slurm runs its job. Asking every 0.2 s was
        a command in the cluster's namespace each time (nsenter, bash, squeue: ~40 ms of CPU on a loaded
        machine), ~9 % of a 280-node burst's CPU: the bench was part of the load it measured."""
        with open(events, "rb") as f:
            f.seek(read["offset"])
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        read["offset"] += len(whole)
        for line in whole.splitlines():
            e = json.loads(line)
            if e["kind"] == "busy" and e["ts"] >= t_release:
                seen_busy.add(e["node"])
        since = time.monotonic() - read["asked"]
        # Every node seen busy is not every job running at once (a job may be back in the queue): then asked
        # every 0.2 s, as before, not at each look at the log.
        if (len(seen_busy) >= n and since >= 0.2) or since >= 2:
            read["asked"] = time.monotonic()
            return all_running()
        return False

    try:
        (shared / "job.sh").write_text("#!/bin/bash\nsleep 3600\n")
        ids = sh(f"for i in $(seq {n}); do sbatch -H --parsable -o /dev/null {shared}/job.sh; done").split()
        t_release, cpu_release = time.time(), cpu_busy()
        sh(f"scontrol release {','.join(ids)}")
        print(f"{n} jobs released", flush=True)  # a profiler can start now
        up = wait(f"{n} jobs running", all_running_asked_rarely, every=0.05)
        cpu = cpu_busy() - cpu_release
        evs = [json.loads(line) for line in events.read_text().splitlines()]
        evs = [e for e in evs if e["ts"] >= t_release]
        failed = sum(1 for e in evs if e["kind"] == "failed")
        lat = [float(m.group(1)) for e in evs if e["kind"] == "registered" and (m := re.match(r"([\d.]+) s after", e.get("reason", "")))]
        print(f"burst: 0 -> {n} nodes, {n} jobs released at once: all running after {up:.1f} s (target <= 20 s), "
              f"{failed} failed starts (target 0), workers {args.workers}")
        if requeued:
            print(f"{len(requeued)} job(s) requeued as they started (slurmd deleted their script; see docs/reliability.md), "
                  f"not counted above: {','.join(sorted(requeued))}")
        if lat:
            print(f"registration latency (request -> registered), {len(lat)} nodes: median {percentile(lat, 0.5):.2f} s, "
                  f"p95 {percentile(lat, 0.95):.2f} s, max {max(lat):.2f} s")
        # Where the burst's time went: when the last node was requested, made (started), registered with
        # Slurm, and seen running a job (busy), each counted from the release.
        last = {k: max((e["ts"] for e in evs if e["kind"] == k), default=None) for k in ("requested", "started", "registered", "busy")}
        print("timeline from the release, last event of each kind: "
              + ", ".join(f"{k} {ts - t_release:.1f} s" for k, ts in last.items() if ts is not None))
        print(f"CPU busy during the burst (every process, all {os.cpu_count()} cores): {cpu:.1f} s, {1000 * cpu / n:.0f} ms per node; "
              f"load average after it: {os.getloadavg()[0]:.1f}")

        if args.thesis:
            mem = []
            for node in sorted(node_dirs()):
                # cgroup v2, or v1's memory controller (this machine)
                for f in (Path(f"/sys/fs/cgroup/accordion/{name}/{node.name}/memory.current"),
                          Path(f"/sys/fs/cgroup/memory/accordion/{name}/{node.name}/memory.usage_in_bytes")):
                    if f.exists():
                        mem.append(int(f.read_text()) / 2**20)
                        break
            if mem:
                print(f"memory (cgroup usage, page cache included) of {len(mem)} node containers with a sleeping job: "
                      f"median {percentile(mem, 0.5):.1f} MiB per node, total {sum(mem):.0f} MiB")
            sh("scancel --user=root")
            wait("jobs ended", lambda: running() == 0)
            t0 = time.monotonic()
            hosts = sh(f"set -o pipefail; srun -N{n} -n{n} hostname | sort -u | wc -l", timeout=args.deadline).strip()
            print(f"srun -N{n} hostname: {hosts} distinct hosts in {time.monotonic() - t0:.1f} s")
            (shared / "pi.c").write_text((EXAMPLES / "pi.c").read_text())
            sh(f"cd {shared} && mpicc -O2 -o pi pi.c")
            (shared / "pi.sh").write_text(f"#!/bin/bash\nsrun --mpi=pmix {shared}/pi 2000000\n")
            t0 = time.monotonic()
            sh(f"for i in $(seq {n}); do sbatch -N1 -o {shared}/pi-%j.out {shared}/pi.sh >/dev/null; done")
            wait(f"{n} MPI pi jobs done", lambda: int(sh("squeue -h | wc -l").strip()) == 0)
            outs = list(shared.glob("pi-*.out"))
            ok = sum(1 for o in outs if "pi is approximately 3.1" in o.read_text())
            print(f"{n} one-node MPI pi jobs: {ok} printed an estimate, all done after {time.monotonic() - t0:.1f} s")
        else:
            sh("scancel --user=root")
        t_end = time.monotonic()
        wait("jobs ended", lambda: running() == 0)
        wait(f"{n} -> 0 nodes", lambda: not node_dirs())
        total = time.monotonic() - t_end
        print(f"scale-down: {n} -> 0 nodes {total:.1f} s after the jobs ended, {max(0.0, total - args.idle_timeout):.1f} s "
              f"after the idle timeout ({args.idle_timeout:.0f} s; target <= 15 s)")
    except BaseException:
        # What the cluster looked like when the bench gave up, before `down` removes it.
        evs = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
        kinds: dict[str, int] = {}
        for e in evs:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        print(f"events by kind: {kinds}", file=sys.stderr)
        for e in evs[-15:]:
            print(f"  {e}", file=sys.stderr)
        for script in ("sinfo -h -o '%T %D'", "squeue -h -o %T | sort | uniq -c"):
            try:
                print(f"{script}:\n{sh(script, timeout=30)}", file=sys.stderr)
            except (subprocess.SubprocessError, OSError) as exc:
                print(f"{script}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"left up: accordion down -c {name}", file=sys.stderr)
            name = ""
        raise
    finally:
        if name:
            accordion("down", "-c", name)
        cfg.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
