#!/bin/bash
# Accordion head: `accordion up` starts munged, slurmctld and the controller from the cluster file (the
# munge key is generated there, per cluster) and returns once the cluster is ready; the controller's log
# is then the container's output.
#
# ACCORDION_CONFIG: the cluster file (default /etc/accordion/accordion.yaml, a ConfigMap).
# Arguments:        a command to run instead (e.g. `accordion status`).
set -euo pipefail

if [ $# -gt 0 ]; then
  exec "$@"
fi
config=${ACCORDION_CONFIG:-/etc/accordion/accordion.yaml}
accordion up -f "$config"
name=$(accordion list | cut -f1 | head -n 1)
exec tail -F "/var/lib/accordion/$name/logs/controller.log"
