#!/usr/bin/env bash
# A single-node SLURM cluster on localhost for the test suite (tests/pipeline/test_slurm.py): Debian's slurm-wlm and
# munge packages, slurmctld + slurmd + munged started as daemons, no systemd, no cgroups (it runs in a
# container). Needs root. Idempotent: a running cluster is left as it is.
#   .ci/slurm_cluster.sh          install (if missing), configure and start; wait until the node is idle
#   .ci/slurm_cluster.sh stop     stop slurmd, slurmctld and munged
# An existing /etc/slurm/slurm.conf that this script did not write is never replaced.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by nnunet_covid .ci/slurm_cluster.sh"
STATE=/var/spool/slurm-nnunet-covid

die() { echo "slurm_cluster: $*" >&2; exit 1; }

stop_slurm() {
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
}

if [ "${1:-start}" = stop ]; then
    stop_slurm
    [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

if sinfo --noheader --states=idle,mixed,allocated --format=%n 2>/dev/null | grep -q .; then
    echo "slurm_cluster: already running"; exit 0
fi

# munge: a key (the package makes one; a fresh one otherwise), the daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
munge_works() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }
if ! munge_works; then
    runuser -u munge -- munged
    for _ in $(seq 50); do munge_works && break; sleep 0.1; done
    munge_works || die "munged did not start; see /var/log/munge/munged.log"
fi

# slurm.conf: this machine's CPUs and memory as one node, one partition
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not replacing it"
fi
node=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]*//')
mkdir -p "$STATE/ctld" "$STATE/d" /var/log/slurm
cat >"$CONF.tmp" <<CONF
$MARK
ClusterName=nnunetcovid
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
# no accounting storage (sacct cannot answer): finished jobs stay visible to squeue for 10 minutes
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"

stop_slurm
sleep 1
slurmctld -c        # a clean state: no jobs left from an earlier cluster
slurmd -N localhost
for _ in $(seq 60); do
    if sinfo --noheader --states=idle --format=%n 2>/dev/null | grep -q localhost; then
        echo "slurm_cluster: node localhost idle ($(sinfo --noheader --format='%c CPUs, %m MB'))"; exit 0
    fi
    sleep 1
done
die "the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log ($(sinfo 2>&1 | tail -n1))"
