#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine: this host is the controller and the one compute node.
#
#   scripts/slurm_cluster.sh start DIR     # writes DIR/slurm.conf, starts munged, slurmctld, slurmd; waits for the node
#   eval "$(scripts/slurm_cluster.sh env DIR)"   # this shell's sbatch, squeue, srun ... then use that cluster
#   scripts/slurm_cluster.sh stop DIR      # cancels its jobs, stops the three daemons (by their pid files), keeps DIR
#
# Everything lives in DIR (a fresh or empty folder; made 0700): its own munge key and socket, the configuration,
# state, spool, pid and log files; ports are free ones picked at start (or SLURMCTLD_PORT / SLURMD_PORT). Nothing is
# written outside DIR, so it needs neither systemd nor /etc/slurm, and several can run side by side.
# Needs root (slurmd starts jobs as their user) and the Debian packages `slurm-wlm munge` (scripts/ci_services.sh).
#
# The node: CPUs = nproc, RealMemory = MemTotal minus 10% (at least 512 MB) left to the system, no cgroups
# (proctrack/linuxproc, task/none: a container without systemd has no cgroup tree of its own to give slurmd), no
# accounting database (MinJobAge keeps finished jobs in `squeue --states=all` for an hour: Snakemake's executor
# then asks squeue, `--slurm-status-command squeue`).
#
# DIR/bin holds wrappers of the client commands with SLURM_CONF set inside them: the SLURM executor plugin's job step
# (snakemake-executor-plugin-slurm-jobstep) drops every SLURM_* variable but the job's id before it calls `srun`, so
# an `srun` inside a job would otherwise look for /etc/slurm/slurm.conf. `env DIR` puts DIR/bin first on PATH.
set -euo pipefail

usage() { echo "usage: $0 start|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
case $dir in /*) ;; *) dir="$PWD/$dir" ;; esac
conf="$dir/slurm.conf"

die() { echo "slurm_cluster: $*" >&2; exit 1; }

free_port() {  # a TCP port nothing listens on now (the kernel's pick)
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_of() { [ -s "$dir/$1.pid" ] && cat "$dir/$1.pid"; }

alive() { local pid; pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null; }

client() { SLURM_CONF="$conf" "$@"; }

stop_daemons() {  # SIGTERM the daemons of pid files $@ together (each takes about 2 s), SIGKILL what is left after 15 s
  local name pid pids=() i left
  for name in "$@"; do
    if pid=$(pid_of "$name") && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  for i in $(seq 150); do
    left=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then left=1; fi
    done
    [ "$left" -eq 1 ] || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root: slurmd starts every job as its user"
  local cmd
  for cmd in munged slurmctld slurmd sbatch squeue srun scontrol sinfo python3; do
    command -v "$cmd" >/dev/null || die "$cmd not found (apt-get install slurm-wlm munge; scripts/ci_services.sh)"
  done
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty (a cluster's folder is used once)"
  chmod 0700 "$dir"
  mkdir -m 0700 "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" "$dir/bin"

  # munge: a fresh key, its own socket (AuthInfo below points slurm at it)
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

  local host cpus mem_kb mem_mb margin ctld_port slurmd_port user
  host=$(hostname -s)
  cpus=$(nproc)
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  mem_mb=$((mem_kb / 1024))
  margin=$((mem_mb / 10 > 512 ? mem_mb / 10 : 512))
  ctld_port=${SLURMCTLD_PORT:-$(free_port)}
  slurmd_port=${SLURMD_PORT:-$(free_port)}
  user=$(id -un)
  cat >"$conf" <<EOF
# written by scripts/slurm_cluster.sh: a one-node cluster in $dir
ClusterName=srnas
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem_mb - margin)) State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  for cmd in sbatch squeue srun scontrol sinfo scancel sacct; do
    printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$conf" "$(command -v "$cmd")" >"$dir/bin/$cmd"
    chmod 0755 "$dir/bin/$cmd"
  done

  slurmctld -f "$conf"
  slurmd -f "$conf" -N "$host"

  local state="" i
  for i in $(seq 300); do
    state=$(client sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    alive slurmctld || die "slurmctld exited: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
    sleep 0.2
  done
  [ "$state" = idle ] ||
    die "node $host is '${state:-unknown}' after 60 s, not idle: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"
  echo "slurm_cluster: node $host idle ($cpus CPUs, $((mem_mb - margin)) MB), SLURM_CONF=$conf"
}

stop() {  # whatever of the three daemons runs (a start that failed half-way is stopped too)
  [ -d "$dir" ] || die "$dir not found"
  if [ -f "$conf" ] && alive slurmctld; then
    client scancel --quiet --user "$(id -un)" 2>/dev/null || true
  fi
  stop_daemons slurmd slurmctld munged
}

case $action in
  start) start ;;
  stop) stop ;;
  env) [ -f "$conf" ] || die "$conf not found"; printf 'export SLURM_CONF=%q PATH=%q:"$PATH"\n' "$conf" "$dir/bin" ;;
  *) usage ;;
esac
