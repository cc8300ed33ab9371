"""dask-jobqueue as its documentation shows it: SLURMCluster with no address given, then adapt()."""

import getpass
import socket
import time

from dask_jobqueue import SLURMCluster
from distributed import Client


def where(i: int) -> tuple[str, str]:
    time.sleep(1)
    return socket.gethostname(), getpass.getuser()


cluster = SLURMCluster(cores=1, memory="400MB", walltime="00:10:00")
cluster.adapt(minimum=0, maximum=4)
with Client(cluster) as client:
    results = client.gather(client.map(where, range(16)))
cluster.close()
print("HOST", *sorted({h for h, _ in results}))
print("USER", *sorted({u for _, u in results}))
