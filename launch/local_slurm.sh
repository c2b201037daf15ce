#!/usr/bin/env bash
# A local Slurm cluster on this machine, for development and tests.
#
#   bash launch/local_slurm.sh start             # install if needed, configure, start daemons, wait until idle
#   bash launch/local_slurm.sh start --nodes 2   # the same cluster with 2 compute nodes (network namespaces)
#   bash launch/local_slurm.sh status            # print daemon and node state (exit 1 when not running)
#   bash launch/local_slurm.sh stop              # stop the daemons, remove the nodes' namespaces
#
# One node (the default): NodeName=localhost, slurmctld and slurmd run directly on this machine.
# N nodes: this machine is the head node (slurmctld, munged, sbatch/squeue); compute node i is a network
# namespace `slurm-node<i>` plus its own UTS namespace (host name `node<i>`), holding only its slurmd. The
# namespaces hang off a bridge `slurmbr0` ($SUBNET.1 on the head, $SUBNET.(10+i) on node i), and /etc/hosts
# (shared by every namespace) maps node<i> to its address, so the nodes reach each other, the controller and
# the jobs' rendezvous (MASTER_ADDR=node1) over the bridge only. Everything else is shared as on a real cluster
# with a shared file system: the munge socket (a file), /etc/slurm, the spool/log/pid directories (per node
# through %n) and the jobs' output folders. Each node advertises all of this machine's CPUs and memory (the
# nodes are views of one machine), so two nodes over-commit the cores by two.
# `start` without --nodes keeps the node count of the existing configuration (1 when there is none).
#
# Needs root (packages, munge key, namespaces, daemons). Idempotent: `start` on a running cluster only checks
# it; a changed layout restarts the daemons, and is refused while jobs are queued (SLURM_LOCAL_FORCE=1 overrides).
# Daemons run without systemd (containers): munged, slurmctld and slurmd are started directly.
# Process tracking is plain /proc (proctrack/linuxproc, task/none): jobs are not put in cgroups (slurmd still
# expects the cgroup file system mounted where it looks at start-up).
# There is no slurmdbd: job state comes from squeue/scontrol; `sacct` answers from the job-completion
# log (jobcomp/filetxt) only, which is why launch/ never depends on sacct.
#
# A second, independent cluster can run side by side (e.g. to try a layout without touching the one in use):
# SLURM_LOCAL_INSTANCE=NAME puts its config, state, logs and pid files in /etc/slurm-NAME, /var/spool/slurm-NAME,
# ... and SLURM_LOCAL_CTLD_PORT gives its controller another port; clients select it with
# SLURM_CONF=/etc/slurm-NAME/slurm.conf. The node namespaces and the bridge exist once per machine, so at most
# one of the two may have more than one node.
set -euo pipefail

SUFFIX=${SLURM_LOCAL_INSTANCE:+-$SLURM_LOCAL_INSTANCE}
CONF_DIR=/etc/slurm$SUFFIX
SPOOL=/var/spool/slurm$SUFFIX
LOG_DIR=/var/log/slurm$SUFFIX
RUN_DIR=/run/slurm$SUFFIX
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
SUBNET=${SLURM_LOCAL_SUBNET:-10.213.0}  # first three octets of the nodes' /24
BRIDGE=slurmbr0
NS_PREFIX=slurm-  # namespace (and host-side veth) of node i: slurm-node<i>
HOSTS_BEGIN="# BEGIN local_slurm.sh nodes"
HOSTS_END="# END local_slurm.sh nodes"
export SLURM_CONF=$CONF_DIR/slurm.conf  # daemons and clients of this script use this cluster's config

log() { echo "[local_slurm] $*"; }
die() { echo "[local_slurm] error: $*" >&2; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes /etc/slurm, starts daemons)"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null || missing+=(slurm-wlm munge)
    [[ $NODES -gt 1 ]] && ! command -v ip >/dev/null && missing+=(iproute2)
    [[ $NODES -gt 1 ]] && ! command -v unshare >/dev/null && missing+=(util-linux)
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- layout -----------------------------------------------------------------------------------------------

node_name() { if [[ $NODES -eq 1 ]]; then echo localhost; else echo "node$1"; fi; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
node_list() { if [[ $NODES -eq 1 ]]; then echo localhost; else echo "node[1-$NODES]"; fi; }
slurmd_pidfile() { if [[ $NODES -eq 1 ]]; then echo "$RUN_DIR/slurmd.pid"; else echo "$RUN_DIR/slurmd-$1.pid"; fi; }

configured_nodes() {
    # Node count of the existing configuration; 1 when there is none.
    local count=0
    [[ -s $CONF_DIR/slurm.conf ]] && count=$(grep -c '^NodeName=' "$CONF_DIR/slurm.conf" || true)
    echo $((count > 0 ? count : 1))
}

render_config() {
    local cpus mem_mb host i
    cpus=$(nproc)
    # Leave ~10% of memory to the OS so slurmd does not drain the node for "Low RealMemory".
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    if [[ $NODES -eq 1 ]]; then
        host=localhost
        echo "# Written by launch/local_slurm.sh: one-node cluster on localhost."
    else
        host=$(uname -n)
        host="${host%%.*}($SUBNET.1)"  # slurmctld recognizes itself by its short host name
        echo "# Written by launch/local_slurm.sh: $NODES-node cluster, each node a network + UTS namespace here."
    fi
    cat <<EOF
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
EOF
    if [[ $NODES -eq 1 ]]; then
        echo "SlurmdPidFile=$RUN_DIR/slurmd.pid"
    else
        echo "SlurmdPidFile=$RUN_DIR/slurmd-%n.pid"
    fi
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmdPort=6818"
    echo "StateSaveLocation=$SPOOL/ctld"
    if [[ $NODES -eq 1 ]]; then
        echo "SlurmdSpoolDir=$SPOOL/d"
        echo "SlurmctldLogFile=$LOG_DIR/slurmctld.log"
        echo "SlurmdLogFile=$LOG_DIR/slurmd.log"
    else
        echo "SlurmdSpoolDir=$SPOOL/d-%n"
        echo "SlurmctldLogFile=$LOG_DIR/slurmctld.log"
        echo "SlurmdLogFile=$LOG_DIR/slurmd-%n.log"
    fi
    cat <<EOF
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
EOF
    if [[ $NODES -eq 1 ]]; then
        echo "NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    else
        for ((i = 1; i <= NODES; i++)); do
            echo "NodeName=node$i NodeHostname=node$i NodeAddr=$(node_addr "$i") CPUs=$cpus RealMemory=$mem_mb" \
                "State=UNKNOWN"
        done
    fi
    echo "PartitionName=$PARTITION Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
}

# Writes slurm.conf.new; returns 0 when it differs from the installed slurm.conf.
stage_config() {
    mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$LOG_DIR" "$RUN_DIR"
    render_config >"$CONF_DIR/slurm.conf.new"
    if cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" 2>/dev/null; then
        rm -f "$CONF_DIR/slurm.conf.new"
        return 1
    fi
}

install_config() {
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
    log "wrote $CONF_DIR/slurm.conf (nodes=$(node_list) CPUs=$(nproc) each, partition=$PARTITION)"
}

# --- munge ------------------------------------------------------------------------------------------------

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

start_munged() {
    # One munged for all nodes: its socket is a file under /run/munge, reachable from every network namespace.
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

# --- node namespaces (NODES > 1) ----------------------------------------------------------------------------

setup_network() {
    local i ns
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((i = 1; i <= NODES; i++)); do
        ns=${NS_PREFIX}node$i
        ip netns list | grep -qw "^$ns" || ip netns add "$ns"
        if ! ip link show "$ns" >/dev/null 2>&1; then  # host end of the veth pair; node end is eth0 in $ns
            ip -n "$ns" link del eth0 2>/dev/null || true
            ip link add "$ns" type veth peer name eth0 netns "$ns"
        fi
        ip link set "$ns" master "$BRIDGE" up
        ip -n "$ns" addr replace "$(node_addr "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    write_hosts
}

write_hosts() {
    # Replace our block in /etc/hosts in place (the file may be a bind mount that a rename would not replace).
    local tmp i
    tmp=$(mktemp)
    sed "/^$HOSTS_BEGIN\$/,/^$HOSTS_END\$/d" /etc/hosts >"$tmp"
    if [[ ${1:-} != remove ]]; then
        echo "$HOSTS_BEGIN" >>"$tmp"
        for ((i = 1; i <= NODES; i++)); do echo "$(node_addr "$i") node$i" >>"$tmp"; done
        echo "$HOSTS_END" >>"$tmp"
    fi
    cmp -s "$tmp" /etc/hosts || cat "$tmp" >/etc/hosts
    rm -f "$tmp"
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}node[0-9]*$" || true; }

teardown_network() {
    # Whatever still runs in a node (job steps of a killed slurmd) goes with it.
    local ns pids
    for ns in $(our_namespaces); do
        mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
        if [[ ${#pids[@]} -gt 0 ]]; then
            kill "${pids[@]}" 2>/dev/null || true
            for _ in $(seq 20); do [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break; sleep 0.25; done
            mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
            [[ ${#pids[@]} -eq 0 ]] || kill -9 "${pids[@]}" 2>/dev/null || true
        fi
        ip link del "$ns" 2>/dev/null || true
        ip netns del "$ns"
        log "removed node namespace $ns"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    [[ -w /etc/hosts ]] && grep -qx "$HOSTS_BEGIN" /etc/hosts && write_hosts remove
    return 0
}

# --- daemons ----------------------------------------------------------------------------------------------

pid_alive() {  # the daemon may remove its pid file while we read it
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

start_daemons() {
    local i node
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        log "starting slurmctld"
        /usr/sbin/slurmctld
    fi
    for ((i = 1; i <= NODES; i++)); do
        node=$(node_name "$i")
        pid_alive "$(slurmd_pidfile "$node")" && continue
        log "starting slurmd${SUFFIX:+ ($SLURM_CONF)} on $node"
        if [[ $NODES -eq 1 ]]; then
            /usr/sbin/slurmd
        else
            # Own network namespace (address, ports) and own UTS namespace: slurmd finds its NodeName from
            # the host name, and so do the jobs it starts (submitit's node list, gloo's address lookup).
            # nsenter, not `ip netns exec`: that also makes a mount namespace with a fresh /sys, without the
            # cgroup mounts slurmd checks at start-up.
            mkdir -p "$SPOOL/d-$node"
            nsenter --net="/run/netns/${NS_PREFIX}$node" unshare --uts \
                sh -c "echo $node >/proc/sys/kernel/hostname && exec /usr/sbin/slurmd"
        fi
    done
}

daemons_running() {
    local pidfile
    for pidfile in "$RUN_DIR"/slurmctld.pid "$RUN_DIR"/slurmd*.pid; do
        pid_alive "$pidfile" && return 0
    done
    return 1
}

stop_slurm_daemons() {
    local pidfile
    for pidfile in "$RUN_DIR"/slurmd*.pid "$RUN_DIR"/slurmctld.pid; do
        [[ -e $pidfile ]] || continue
        if pid_alive "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 40); do pid_alive "$pidfile" || break; sleep 0.25; done
        fi
        rm -f "$pidfile"
    done
}

refuse_if_jobs_queued() {
    local jobs
    [[ ${SLURM_LOCAL_FORCE:-0} == 1 ]] && return
    pid_alive "$RUN_DIR/slurmctld.pid" || return 0
    jobs=$(squeue -h -o %i 2>/dev/null | wc -l)
    [[ $jobs -eq 0 ]] && return
    rm -f "$CONF_DIR/slurm.conf.new"
    die "the running cluster has $jobs queued or running jobs and a new layout restarts it;" \
        "wait for them, or set SLURM_LOCAL_FORCE=1 (config not changed)"
}

wait_idle() {
    local states="" node state ready
    for _ in $(seq "$((WAIT_S * 2))"); do
        states=$(sinfo -h -N -o "%N %T" 2>/dev/null || true)
        ready=$(echo "$states" | grep -cE ' (idle|mixed|allocated|completing)$' || true)
        [[ $ready -eq $NODES ]] && return 0
        while read -r node state; do
            case $state in
                down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
            esac
        done <<<"$states"
        sleep 0.5
    done
    die "nodes not idle after ${WAIT_S}s (${states//$'\n'/, }); see $LOG_DIR/slurmctld.log and the slurmd logs"
}

check_links() {
    # Registration only proves head <-> node. Jobs also need node <-> node (rendezvous, gloo): a host firewall
    # that filters bridged traffic (br_netfilter with a DROP forward policy, as Docker sets up) breaks only that.
    local i j addr
    for ((i = 1; i <= NODES; i++)); do
        j=$((i % NODES + 1))
        addr=$(node_addr "$j")
        nsenter --net="/run/netns/${NS_PREFIX}node$i" timeout 5 bash -c "exec 3<>/dev/tcp/$addr/6818" 2>/dev/null \
            || die "node$i cannot reach node$j ($addr:6818) over $BRIDGE; is bridged traffic filtered" \
                "(sysctl net.bridge.bridge-nf-call-iptables, iptables FORWARD policy)?"
    done
}

# --- commands ---------------------------------------------------------------------------------------------

cmd_start() {
    require_root
    install_packages
    setup_munge
    start_munged
    if stage_config; then
        if daemons_running; then
            refuse_if_jobs_queued
            # A new node set or CPU count needs the daemons restarted (scontrol reconfigure does not do that).
            log "configuration changed: restarting slurm daemons"
            stop_slurm_daemons
        fi
        # The namespaces belong to this cluster only if its current layout has several nodes.
        [[ $(configured_nodes) -eq 1 ]] || teardown_network
        install_config
    fi
    [[ $NODES -eq 1 ]] || setup_network
    start_daemons
    wait_idle
    [[ $NODES -eq 1 ]] || check_links
    cmd_status
}

cmd_stop() {
    require_root
    stop_slurm_daemons
    [[ $NODES -eq 1 ]] || teardown_network
    # munged is shared with the machine's main cluster: a side-by-side instance leaves it running.
    if [[ -z $SUFFIX && -s /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
        kill "$(cat /run/munge/munged.pid)"
    fi
    log "stopped"
}

cmd_status() {
    local ok=0 i node pidfile where=""
    if pid_alive "$RUN_DIR/slurmctld.pid"; then log "slurmctld: running (pid $(cat "$RUN_DIR/slurmctld.pid"))"
    else log "slurmctld: not running"; ok=1; fi
    for ((i = 1; i <= NODES; i++)); do
        node=$(node_name "$i")
        pidfile=$(slurmd_pidfile "$node")
        [[ $NODES -eq 1 ]] || where=" on $node ($(node_addr "$i"), netns ${NS_PREFIX}$node)"
        if pid_alive "$pidfile"; then log "slurmd$where: running (pid $(cat "$pidfile"))"
        else log "slurmd$where: not running"; ok=1; fi
    done
    if command -v sinfo >/dev/null && [[ $ok -eq 0 ]]; then
        sinfo -N -o "%N %P %T %c %m" || ok=1
    fi
    return $ok
}

usage() { echo "usage: $0 start [--nodes N] | stop | status" >&2; exit 2; }

COMMAND=${1:-}
[[ $# -gt 0 ]] && shift
NODES=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --nodes) [[ $# -ge 2 ]] || usage; NODES=$2; shift 2 ;;
        --nodes=*) NODES=${1#*=}; shift ;;
        *) usage ;;
    esac
done
if [[ -n $NODES ]]; then
    [[ $COMMAND == start ]] || usage
    [[ $NODES =~ ^[1-9][0-9]*$ && $NODES -le 200 ]] || die "--nodes: expected a whole number from 1 to 200, got '$NODES'"
else
    NODES=$(configured_nodes)
fi

case $COMMAND in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
