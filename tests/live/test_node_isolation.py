"""A node's root shows the host's software, not what is not the node's (issue 11, item 10).

A root job on an elastic node tries to read the host's secrets, Accordion's state and another cluster's
shared directory, and reports how the directories mounted into it are mounted.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

SMALL = {"nodesets": [{"name": "compute", "name_base": "hpc-node", "max_nodes": 1, "cpus": 1, "memory_mb": 256, "idle_timeout": 600}]}
DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL"}
EMPTY = hashlib.sha256(b"").hexdigest()


def test_node_root_hides_host_secrets_state_and_other_clusters(make_cluster):
    c = make_cluster(SMALL)
    # Another cluster's shared directory, as `accordion up` would make it.
    sibling = c.shared.parent / f"{c.name}-sibling"
    sibling.mkdir(mode=0o1777)
    # A host user's home.
    home = Path("/home") / f"{c.name}-home"
    home.mkdir(mode=0o700)
    try:
        (sibling / "marker").write_text("another cluster's data\n")
        (home / ".netrc").write_text("machine example.org password secret\n")
        files = [
            *(p for p in map(Path, ("/etc/shadow-", "/etc/gshadow-", "/etc/munge/munge.key")) if p.is_file()),
            *sorted(Path("/etc/ssh").glob("ssh_host_*_key")),
            sibling / "marker",
            home / ".netrc",
            Path("/var/lib/accordion") / c.name / "cluster.json",
        ]
        # Directory -> what a node may see in it: the run root holds the mount point of its own munge socket;
        # a home is as fresh as a new account's.
        skel = " ".join(sorted(p.name for p in Path("/etc/skel").iterdir()))
        dirs = {"/root": "", str(home): skel, "/etc/munge": "", "/var/lib/accordion": "", "/run/accordion": c.name}
        # Each has something to leak, so that a node reading it empty means it is hidden.
        assert all(f.stat().st_size > 0 for f in files) and any(Path("/root").iterdir())
        out = c.shared / "probe"
        body = "\n".join(
            [
                f"mkdir -p {out}",
                *(f"echo {f} $(cat {f} 2>/dev/null | sha256sum | cut -c1-64) >> {out}/files" for f in files),
                *(f"echo {d} $(ls -A {d} 2>/dev/null | tr '\\n' ' ') >> {out}/dirs" for d in dirs),
                f"echo $(ls -A {c.shared.parent}) > {out}/shared_root",
                f"cp /etc/shadow /etc/gshadow /proc/self/mountinfo {out}/",
                # The accounts are still there for PAM: root can still become another user.
                f"su -s /bin/sh nobody -c 'id -u' > {out}/su 2>&1",
            ]
        )
        job = c.sbatch(body, "-N1", name="probe")
        state = c.wait_job(job, DONE, 60)
        assert state == "COMPLETED", (state, (c.shared / f"slurm-{job}.out").read_text())

        # Every leak is collected, so that one run shows all of them.
        leaks: list[str] = []
        seen = dict(line.split(" ", 1) for line in (out / "files").read_text().splitlines())
        leaks += [f"reads {f}" for f in files if seen[str(f)] != EMPTY]
        listed = dict(line.partition(" ")[::2] for line in (out / "dirs").read_text().splitlines())
        leaks += [f"lists {d}: {listed[d]}" for d, own in dirs.items() if " ".join(sorted(listed[d].split())) != own]
        if (others := (out / "shared_root").read_text().split()) != [c.name]:
            leaks.append(f"lists {c.shared.parent}: {others}")

        # Accounts stay (PAM needs them), password hashes do not.
        for name in ("shadow", "gshadow"):
            node = [line.split(":") for line in (out / name).read_text().splitlines()]
            host = [line.split(":") for line in Path(f"/etc/{name}").read_text().splitlines()]
            assert [f[0] for f in node] == [f[0] for f in host]
            if not {f[1] for f in node} <= {"*", "!"}:
                leaks.append(f"reads password fields in /etc/{name}: {sorted({f[1][:3] for f in node})}")
        assert (out / "su").read_text().strip() == "65534"

        # Directories mounted from the head cannot carry set-user-ID programs or devices into the node.
        mounts = {f[4]: f[5].split(",") for f in (line.split() for line in (out / "mountinfo").read_text().splitlines())}
        leaks += [f"has {t} mounted {mounts[t]}" for t in (str(c.shared), "/run/munge") if not {"nosuid", "nodev"} <= set(mounts[t])]
        assert leaks == [], "a root job on a node:\n" + "\n".join(leaks)
    finally:
        shutil.rmtree(sibling)
        shutil.rmtree(home)
