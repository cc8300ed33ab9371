#!/usr/bin/env bash
# Sets everything up, starts an elastic Slurm cluster with no configuration, and shows it breathe:
# a 2-node MPI job makes exactly two nodes appear, runs, and the nodes go once idle.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
name=${ACCORDION_CLUSTER:-accordion}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
in_cluster() { accordion shell -c "$name" -- "$@"; }

step "accordion up (no cluster file: one node set 'compute', up to 4 nodes of 2 CPUs, idle timeout 60 s)"
accordion up -n "$name"
shared=/srv/accordion/$name

step "sinfo: the whole capacity is visible, no node exists yet"
in_cluster sinfo
in_cluster sinfo -R

step "build a Monte-Carlo pi MPI program with Debian's OpenMPI, in the shared directory $shared"
cp "$here/examples/pi.c" "$shared/"
in_cluster mpicc -O2 -o "$shared/pi" "$shared/pi.c"
cat > "$shared/pi.sh" <<JOB
#!/bin/bash
#SBATCH -N2 --ntasks-per-node=2 -o $shared/pi-%j.out
srun --mpi=pmix $shared/pi 20000000
JOB

step "sbatch -N2 pi.sh: the job waits, Accordion starts exactly the 2 nodes it needs"
job=$(in_cluster sbatch --parsable "$shared/pi.sh")
in_cluster squeue
for _ in $(seq 200); do
  state=$(in_cluster squeue -h -j "$job" -o %T 2>/dev/null || true)
  [ -z "$state" ] && break
  sleep 0.2
done
in_cluster sinfo
step "job output"
cat "$shared/pi-$job.out"

step "the nodes are idle; they are removed after the idle timeout (60 s)"
for _ in $(seq 120); do
  left=$(accordion status -c "$name" --json | python3 -c 'import json,sys; print(sum(len(s["node_states"]) for s in json.load(sys.stdin)["nodesets"]))')
  printf '\r  nodes up: %s ' "$left"
  [ "$left" = 0 ] && break
  sleep 1
done
echo
step "accordion events"
accordion events -c "$name"
step "accordion status"
accordion status -c "$name"
cat <<EOF2

The cluster '$name' is still up. Try:
  accordion shell -c $name            # sbatch, squeue, sinfo, srun work there
  accordion scale -c $name compute 3  # pin the node set to 3 nodes; --auto gives it back
  accordion down -c $name             # stop everything, nothing left behind
EOF2
