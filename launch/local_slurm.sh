#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for development and tests.
#
#   bash launch/local_slurm.sh start    # install if needed, configure, start daemons, wait until the node is idle
#   bash launch/local_slurm.sh status   # print daemon and node state (exit 1 when not running)
#   bash launch/local_slurm.sh stop     # stop slurmd, slurmctld and munged
#
# Needs root (packages, munge key, daemons). Idempotent: `start` on a running cluster only checks it.
# Daemons run without systemd (containers): munged, slurmctld and slurmd are started directly.
# Process tracking is plain /proc (proctrack/linuxproc, task/none), so no cgroups are needed.
# There is no slurmdbd: job state comes from squeue/scontrol; `sacct` answers from the job-completion
# log (jobcomp/filetxt) only, which is why launch/ never depends on sacct.
set -euo pipefail

CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

log() { echo "[local_slurm] $*"; }
die() { echo "[local_slurm] error: $*" >&2; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes /etc/slurm, starts daemons)"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    local cpus mem_mb host
    cpus=$(nproc)
    # Leave ~10% of memory to the OS so slurmd does not drain the node for "Low RealMemory".
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    host=localhost
    mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOG_DIR" "$RUN_DIR"
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
# Written by launch/local_slurm.sh: one-node cluster on localhost.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=defer_batch
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
JobAcctGatherType=jobacct_gather/none
# Requeued jobs may start again at once (tests requeue on purpose).
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
MessageTimeout=30
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" 2>/dev/null; then
        mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
        log "wrote $CONF_DIR/slurm.conf (CPUs=$cpus RealMemory=${mem_mb}MB partition=$PARTITION)"
        return 0
    fi
    rm -f "$CONF_DIR/slurm.conf.new"
    return 1
}

setup_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munged() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    log "starting munged"
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.5
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

start_daemons() {
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        log "starting slurmctld"
        /usr/sbin/slurmctld
    fi
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        log "starting slurmd"
        /usr/sbin/slurmd
    fi
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1 || true; }

wait_idle() {
    local state=""
    for _ in $(seq "$((WAIT_S * 2))"); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
            down* | drain* | fail*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node not idle after ${WAIT_S}s (state: ${state:-unknown}); see $LOG_DIR/slurmctld.log and slurmd.log"
}

restart_if_reconfigured() {
    # A changed slurm.conf needs the daemons restarted (scontrol reconfigure does not change node CPUs).
    if pid_alive "$RUN_DIR/slurmctld.pid" || pid_alive "$RUN_DIR/slurmd.pid"; then
        log "configuration changed: restarting slurm daemons"
        stop_slurm_daemons
    fi
}

stop_slurm_daemons() {
    local name pidfile
    for name in slurmd slurmctld; do
        pidfile=$RUN_DIR/$name.pid
        if pid_alive "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 40); do pid_alive "$pidfile" || break; sleep 0.25; done
        fi
        rm -f "$pidfile"
    done
}

cmd_start() {
    require_root
    install_packages
    setup_munge
    if write_config; then restart_if_reconfigured; fi
    start_munged
    start_daemons
    wait_idle
    cmd_status
}

cmd_stop() {
    require_root
    stop_slurm_daemons
    if [[ -s /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
        kill "$(cat /run/munge/munged.pid)"
    fi
    log "stopped"
}

cmd_status() {
    local ok=0
    for name in slurmctld slurmd; do
        if pid_alive "$RUN_DIR/$name.pid"; then log "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"
        else log "$name: not running"; ok=1; fi
    done
    if command -v sinfo >/dev/null && [[ $ok -eq 0 ]]; then
        sinfo -N -o "%N %P %T %c %m" || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
