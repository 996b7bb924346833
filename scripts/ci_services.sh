#!/usr/bin/env bash
# The services some tests need that pip cannot install, installed with apt-get when missing (idempotent, quiet).
# .ci/run calls it before `make test` and exports SRNAS_REQUIRE_SERVICES=1, under which a test whose service is
# missing fails instead of skipping. Needs root (or sudo) only when something is missing. Each service: one block.
set -euo pipefail

missing=()

# PostgreSQL: the shared search study and the MLflow tracking server's store (tests/test_shared_study.py and
# tests/test_tracking_server.py start a throwaway cluster from these binaries; the tests' fixture finds them under
# /usr/lib/postgresql/<major>/bin, so no system cluster needs to run; the server itself is the venv's mlflow)
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi

# SLURM and MUNGE: the pipeline through profiles/slurm (tests/test_slurm.py starts a one-node cluster from these
# daemons and clients with scripts/slurm_cluster.sh; no system service needs to run)
for tool in munged slurmctld slurmd sbatch squeue srun scontrol sinfo scancel; do
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null; then
    missing+=(slurm-wlm munge)
    break
  fi
done

if ((${#missing[@]})); then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q >/dev/null
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  echo "ci_services: installed ${missing[*]}"
fi
