"""submitit as its documentation shows it: an AutoExecutor (it finds Slurm) and a map of 8 functions."""

import getpass
import os
import socket
import time

import submitit


def square(i: int) -> tuple[int, str, str]:
    time.sleep(1)
    return i * i, socket.gethostname(), getpass.getuser()


executor = submitit.AutoExecutor(folder=os.path.join(os.getcwd(), "submitit-logs"))
assert executor.cluster == "slurm", executor.cluster
executor.update_parameters(timeout_min=5, cpus_per_task=1, slurm_mem="300M")
jobs = executor.map_array(square, range(8))
results = [job.result() for job in jobs]
print("RESULTS", [r for r, _, _ in results])
print("HOST", *sorted({h for _, h, _ in results}))
print("USER", *sorted({u for _, _, u in results}))
