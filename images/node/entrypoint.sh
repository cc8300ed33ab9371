#!/bin/bash
# Accordion node entrypoint: start munged, then run slurmd in the foreground.
#
# munge key:   a Secret mounted at /etc/munge-key (key munge.key) is installed as /etc/munge/munge.key
#              (0400, owned by munge) and munged is started here. Without it, a munge socket bound in at
#              /run/munge/munge.socket.2 by the host is used as is (the local provider's way).
# slurm.conf:  a ConfigMap mounted at /etc/slurm (key slurm.conf); or, without one, configless mode with
#              SLURM_CONF_SERVER=host[:port] (slurmd --conf-server).
# /etc/hosts:  lines of /etc/slurm/hosts (EXTRA_HOSTS_FILE), if present, are appended to it.
# Environment: SLURMD_NODENAME (slurmd -N; default: Slurm matches the hostname), SLURMD_OPTIONS (extra args),
#              SLURM_AUTH_SOCKET (where slurm.conf's AuthInfo expects the munge socket: linked to munged's).
# Arguments:   none or options only (starting with -): added to `slurmd -D`; otherwise the command is run
#              as given, after munged is up.
set -euo pipefail

log() { echo "accordion-node: $*" >&2; }

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
  chmod 0755 /run/munge   # clients (slurmd, srun as any user) must reach the socket
  install -o munge -g munge -m 0400 "$key_src" /etc/munge/munge.key
  # munged forks only once it is ready (its socket exists).
  setpriv --reuid=munge --regid=munge --clear-groups munged
  for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
  [ -S "$socket" ] || { log "munged did not create $socket"; cat /var/log/munge/munged.log >&2 || true; exit 1; }
  # slurm.conf (fetched from slurmctld in configless mode) may name another socket path (AuthInfo).
  if [ -n "${SLURM_AUTH_SOCKET:-}" ] && [ "$SLURM_AUTH_SOCKET" != "$socket" ]; then
    mkdir -p "$(dirname "$SLURM_AUTH_SOCKET")"
    ln -sf "$socket" "$SLURM_AUTH_SOCKET"
  fi
elif [ -S "$socket" ]; then
  log "no munge key at $key_src: using the munge socket at $socket"
else
  munge_missing=1
fi

if [ -n "${munge_missing:-}" ]; then
  # slurmd cannot work without munge; any other command (a shell, a test) may.
  case "${1:--}" in
    -*|*/slurmd|slurmd) log "no munge key at $key_src and no socket at $socket"; exit 1 ;;
    *) log "no munge key at $key_src and no socket at $socket: munged not started" ;;
  esac
fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

args=(-D)
[ -n "${SLURMD_NODENAME:-}" ] && args+=(-N "$SLURMD_NODENAME")
if [ -f "${SLURM_CONF:-/etc/slurm/slurm.conf}" ]; then
  :
elif [ -n "${SLURM_CONF_SERVER:-}" ]; then
  args+=(--conf-server "$SLURM_CONF_SERVER")
else
  log "no ${SLURM_CONF:-/etc/slurm/slurm.conf} (mount a ConfigMap at /etc/slurm) and no SLURM_CONF_SERVER"; exit 1
fi
mkdir -p /var/spool/slurmd
# shellcheck disable=SC2086  # SLURMD_OPTIONS is a list of words
exec /usr/sbin/slurmd "${args[@]}" ${SLURMD_OPTIONS:-} "$@"
