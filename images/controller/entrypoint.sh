#!/bin/bash
# Accordion controller entrypoint: start munged, then run slurmctld in the foreground.
#
# munge key:   a Secret mounted at /etc/munge-key (key munge.key) is installed as /etc/munge/munge.key
#              (0400, owned by munge) and munged is started here; without it, a munge socket already at
#              /run/munge/munge.socket.2 (bound in) is used.
# slurm.conf:  a ConfigMap mounted at /etc/slurm (key slurm.conf). The directories it names for
#              StateSaveLocation, SlurmctldLogFile and SlurmctldPidFile are created, owned by SlurmUser.
# /etc/hosts:  lines of /etc/slurm/hosts (EXTRA_HOSTS_FILE), if present, are appended to it.
# Arguments:   none or options only (starting with -): added to `slurmctld -D`; otherwise the command is
#              run as given (e.g. `accordion ...`), after munged is up.
set -euo pipefail

log() { echo "accordion-controller: $*" >&2; }

# Extra /etc/hosts lines (e.g. a key `hosts` of the slurm.conf ConfigMap): podman 4.3's kube play writes a
# Pod's hostAliases only into its infra container's /etc/hosts, not into the other containers'.
hosts_extra=${EXTRA_HOSTS_FILE:-/etc/slurm/hosts}
if [ -f "$hosts_extra" ] && [ -w /etc/hosts ] && ! grep -q '^# accordion extra hosts' /etc/hosts; then
  { echo '# accordion extra hosts'; cat "$hosts_extra"; } >> /etc/hosts
fi

key_src=${MUNGE_KEY_FILE:-/etc/munge-key/munge.key}
socket=/run/munge/munge.socket.2
if [ -f "$key_src" ]; then
  install -o munge -g munge -m 0700 -d /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  install -o munge -g munge -m 0400 "$key_src" /etc/munge/munge.key
  setpriv --reuid=munge --regid=munge --clear-groups munged
  for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
  [ -S "$socket" ] || { log "munged did not create $socket"; cat /var/log/munge/munged.log >&2 || true; exit 1; }
elif [ -S "$socket" ]; then
  log "no munge key at $key_src: using the munge socket at $socket"
else
  munge_missing=1
fi

if [ -n "${munge_missing:-}" ]; then
  # slurmctld cannot work without munge; any other command (a shell, a test) may.
  case "${1:--}" in
    -*|*/slurmctld|slurmctld) log "no munge key at $key_src and no socket at $socket"; exit 1 ;;
    *) log "no munge key at $key_src and no socket at $socket: munged not started" ;;
  esac
fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

conf=${SLURM_CONF:-/etc/slurm/slurm.conf}
[ -f "$conf" ] || { log "no $conf: mount a ConfigMap with slurm.conf at /etc/slurm"; exit 1; }
setting() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\([^[:space:]#]*\).*/\1/Ip" "$conf" | tail -n 1; }
user=$(setting SlurmUser); user=${user:-slurm}
state=$(setting StateSaveLocation); state=${state:-/var/spool}   # Slurm 22.05's default
mkdir -p "$state"; chown "$user:" "$state"
for f in "$(setting SlurmctldLogFile)" "$(setting SlurmctldPidFile)"; do
  if [ -n "$f" ]; then mkdir -p "$(dirname "$f")"; fi
done
exec /usr/sbin/slurmctld -D "$@"
