#!/usr/bin/env bash
# A real, single-node SLURM cluster on this machine, for testing ksir's `launcher=slurm`
# (hydra-submitit-launcher -> submitit -> sbatch/srun) against a real scheduler.
#
#   bash scripts/slurm-local.sh start     # install (first time), configure, start, wait until the node is idle
#   bash scripts/slurm-local.sh status    # sinfo + squeue
#   bash scripts/slurm-local.sh stop      # cancel leftover jobs, stop all the daemons
#   bash scripts/slurm-local.sh restart   # stop + start (rewrites the configuration)
#
# Needs root: it installs Debian packages (slurm-wlm, munge; slurmdbd, mariadb-server for
# accounting), writes /etc/slurm/slurm.conf + slurmdbd.conf and runs the daemons itself (there is
# no systemd here): munged (as user munge), mariadbd (as user mysql), slurmdbd, slurmctld, slurmd
# (as root). Their PID files are under /var/run (see *_PIDFILE below), so `stop` can end them.
# Every command is idempotent: `start` on a running cluster only checks that the node is up.
#
# Then, e.g. (ksir's conf/launcher/slurm.yaml asks for a GPU, 8 CPUs and 64 GB by default):
#   ksir-run -m launcher=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=0 \
#       hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4 job=train ... seed=0,1
#
# One partition, `debug` (the default), one node named after `hostname -s` (reached at 127.0.0.1),
# CPUs = nproc, RealMemory = available memory minus a margin (memory is not a consumable resource:
# SelectTypeParameters=CR_Core, so --mem is only checked against RealMemory).
#
# Accounting (default on): slurmdbd + a local MariaDB, so that `sacct` works. submitit polls job
# states only through `sacct`; without accounting every poll logs "Bypassing sacct error ...", all
# states read UNKNOWN, and a job that dies without writing its result pickle (scancel, OOM kill)
# makes the launcher wait forever. KSIR_SLURM_ACCOUNTING=0 leaves slurmdbd and MariaDB out.
#
# Settings (environment): KSIR_SLURM_ACCOUNTING (1), KSIR_SLURM_PARTITION (debug),
# KSIR_SLURM_CLUSTER (ksir), KSIR_SLURM_MEM_MARGIN_MB (2048), KSIR_SLURM_WAIT_S (60).
set -euo pipefail

ACCOUNTING=${KSIR_SLURM_ACCOUNTING:-1}
PARTITION=${KSIR_SLURM_PARTITION:-debug}
CLUSTER=${KSIR_SLURM_CLUSTER:-ksir}
MEM_MARGIN_MB=${KSIR_SLURM_MEM_MARGIN_MB:-2048}
WAIT_S=${KSIR_SLURM_WAIT_S:-60}

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
RUN_DIR=/var/run/ksir-slurm           # PID files of slurmctld, slurmd, slurmdbd
STATE_DIR=/var/spool/slurmctld        # slurmctld's saved state (jobs survive a restart)
SPOOL_DIR=/var/spool/slurmd           # slurmd's spool (batch scripts of running jobs)
LOG_DIR=/var/log/slurm                # slurmctld.log, slurmd.log, slurmdbd.log
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/var/run/munge              # munged's socket and PID file (it must own the folder)
MYSQL_RUN=/var/run/mysqld             # mariadbd's socket and PID file (likewise)
MYSQL_LOG=/var/log/mysql
SLURMCTLD_PIDFILE=$RUN_DIR/slurmctld.pid
SLURMD_PIDFILE=$RUN_DIR/slurmd.pid
SLURMDBD_PIDFILE=$RUN_DIR/slurmdbd.pid
MUNGED_PIDFILE=$MUNGE_RUN/munged.pid
MARIADBD_PIDFILE=$MYSQL_RUN/mysqld.pid
MARKER="# Written by ksir scripts/slurm-local.sh"

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

# --- processes --------------------------------------------------------------------------------

# pid_of NAME PIDFILE: the PID in PIDFILE if that process is alive and is NAME, else nothing.
# (Checking the name keeps a stale PID file from making us signal an unrelated, reused PID.)
pid_of() {
    local name=$1 file=$2 pid
    [[ -r $file ]] || return 0
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]] && echo "$pid"
    return 0
}

# wait_for SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds; fail after SECONDS.
wait_for() {
    local tries=$(($1 * 10)) i
    shift
    for ((i = 0; i < tries; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# started NAME PIDFILE: wait (10 s at most) until a daemon that forked itself has written its PID file.
started() {
    local i pid=""
    for ((i = 0; i < 100; i++)); do
        pid=$(pid_of "$1" "$2")
        [[ -n $pid ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || die "$1 did not start (see $LOG_DIR/$1.log)"
    say "started $1 (pid $pid)"
}

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_daemon() {
    local name=$1 pid i
    pid=$(pid_of "$name" "$2")
    [[ -n $pid ]] || { say "$name not running"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $name (pid $pid; it ignored SIGTERM for 15 s)"
}

# --- installation -----------------------------------------------------------------------------

install_packages() {
    local cmds=(slurmctld slurmd sbatch srun scontrol sinfo squeue sacct munged mungekey)
    local pkgs=(slurm-wlm munge) missing=0 cmd
    if ((ACCOUNTING)); then
        cmds+=(slurmdbd sacctmgr mariadbd mariadb)
        pkgs+=(slurmdbd mariadb-server)
    fi
    for cmd in "${cmds[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    say "installing ${pkgs[*]} (apt-get; ~10 s from a near mirror, a minute or two otherwise)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting daemons (no init system owns them here;
    # this script starts them). policy-rc.d is Debian's standard switch for that.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    # apt-get update only when the package lists do not know a package, or the install fails
    # (stale lists point at .debs that the mirror no longer has).
    local p need_update=0
    for p in "${pkgs[@]}"; do
        apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]' || need_update=1
    done
    local log=/var/log/slurm-local-apt.log
    : >"$log"
    if ((need_update)); then
        apt-get update >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
    fi
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1; then
        apt-get update >>"$log" 2>&1 || true
        apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1 ||
            { tail -n 20 "$log" >&2; die "apt-get install failed (log: $log)"; }
    fi
    ((made_policy)) && rm -f "$policy"
    say "installed $(slurmctld -V)"
}

# --- configuration ----------------------------------------------------------------------------

write_config() {
    local host cpus avail_mb mem_mb acct
    host=$(hostname -s)
    cpus=$(nproc)
    avail_mb=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
    mem_mb=$((avail_mb - MEM_MARGIN_MB))
    ((mem_mb >= 1024)) || mem_mb=1024
    mkdir -p /etc/slurm
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        cp -p "$CONF" "$CONF.bak.$(date +%s)"  # someone else's configuration: keep a copy
        say "kept the previous $CONF as $CONF.bak.*"
    fi
    if ((ACCOUNTING)); then
        acct="# Job accounting through slurmdbd (and MariaDB), so that sacct works (submitit polls it).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
    else
        acct="# No accounting: sacct fails (\"Slurm accounting storage is disabled\").
AccountingStorageType=accounting_storage/none"
    fi
    cat >"$CONF" <<EOF
$MARKER ($(date -Is)); rewritten whenever it starts the daemons.
# A one-node test cluster: see that script for how to start / stop it.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# How long a job step credential lives. A requeued job also waits this long before it may start
# again (its EligibleTime is requeue time + cred_expire; the default 120 s slows requeue tests).
AuthInfo=cred_expire=10

StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# The default MailProg (/usr/bin/mail) is not installed and slurmctld logs an error without one.
MailProg=/bin/true

# No cgroups in a container / VM without systemd: track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core

$acct
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

# Fast turnaround for tests: no batching of submissions, backfill every second (it starts a new
# job ~1 s after sbatch), and the main scheduler every second too (it is what starts a requeued
# job once its EligibleTime has passed; the default sched_interval=60 leaves it pending a minute).
# SIGKILL 5 s after SIGTERM, node back in service by itself, finished jobs kept in slurmctld for an
# hour (squeue -t all / scontrol show job still show them, with Restarts=).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
KillWait=5
MinJobAge=3600
ReturnToService=2
InactiveLimit=0
Waittime=0
# Reject at submission a job that can never run here (e.g. ksir's default cpus_per_task=8 on a
# 2-CPU node), instead of leaving it PENDING (Reason=PartitionConfig) while the launcher waits.
EnforcePartLimits=ALL
# Batch jobs may be requeued (scontrol requeue: what submitit's USR2 handler calls).
JobRequeue=1

NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    say "wrote $CONF (node $host: CPUs=$cpus RealMemory=${mem_mb}MB, partition $PARTITION)"
    ((ACCOUNTING)) || return 0
    # slurmdbd runs as root and reaches MariaDB's root account through its Unix socket (Debian's
    # root@localhost authenticates by unix_socket: no password anywhere). slurmdbd insists on mode 600.
    (
        umask 077
        cat >"$DBD_CONF" <<EOF
$MARKER ($(date -Is)).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$SLURMDBD_PIDFILE
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
EOF
    )
    chmod 600 "$DBD_CONF"
}

# --- daemons ----------------------------------------------------------------------------------

start_munged() {
    if [[ ! -s $MUNGE_KEY ]]; then  # the Debian package normally creates one
        mkdir -p "$(dirname "$MUNGE_KEY")"
        mungekey -c -k "$MUNGE_KEY"
        say "created $MUNGE_KEY"
    fi
    chown munge:munge "$MUNGE_KEY" && chmod 400 "$MUNGE_KEY"
    # munged refuses to run unless its folders belong to user munge and are not world-writable.
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    [[ -n $(pid_of munged "$MUNGED_PIDFILE") ]] && return 0
    rm -f "$MUNGED_PIDFILE"
    runuser -u munge -- munged  # daemonises; writes $MUNGED_PIDFILE
    wait_for 10 bash -c 'munge -n | unmunge' || die "munged did not come up (see /var/log/munge/munged.log)"
    say "started munged (pid $(pid_of munged "$MUNGED_PIDFILE"))"
}

start_mariadb() {
    install -d -o mysql -g mysql -m 0755 "$MYSQL_RUN"
    install -d -o mysql -g adm -m 2750 "$MYSQL_LOG"
    if [[ ! -d /var/lib/mysql/mysql ]]; then  # the package's postinst normally does this
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    [[ -n $(pid_of mariadbd "$MARIADBD_PIDFILE") ]] && return 0
    # Socket only (no TCP port); small buffers; the lock wait slurmdbd asks for.
    setsid mariadbd --user=mysql --skip-networking --socket="$MYSQL_RUN/mysqld.sock" \
        --pid-file="$MARIADBD_PIDFILE" --log-error="$MYSQL_LOG/error.log" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for 30 mariadb -e 'select 1' || die "MariaDB did not come up (see $MYSQL_LOG/error.log)"
    say "started mariadbd (pid $(pid_of mariadbd "$MARIADBD_PIDFILE"))"
}

start_slurmdbd() {
    [[ -n $(pid_of slurmdbd "$SLURMDBD_PIDFILE") ]] && return 0
    slurmdbd  # daemonises; creates the database slurm_acct_db on first start
    wait_for 30 sacctmgr -n list cluster || die "slurmdbd did not come up (see $LOG_DIR/slurmdbd.log)"
    say "started slurmdbd (pid $(pid_of slurmdbd "$SLURMDBD_PIDFILE"))"
}

node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }

wait_idle() {
    local start=$SECONDS state="" resumed=0
    while ((SECONDS - start < WAIT_S)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;  # up (busy is fine on a re-`start`)
            down* | drain*)
                # e.g. DOWN after being stopped with jobs on it; ReturnToService=2 usually handles it.
                if ((!resumed)); then
                    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        sleep 0.2
    done
    echo "slurm-local: error: node not idle after ${WAIT_S}s (state: '${state:-no answer}')" >&2
    sinfo -R >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
}

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
    install_packages
    mkdir -p "$RUN_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    local t0=$SECONDS
    if [[ -z $(pid_of slurmctld "$SLURMCTLD_PIDFILE") && -z $(pid_of slurmd "$SLURMD_PIDFILE") ]]; then
        write_config  # only while neither runs, so a second `start` changes nothing
    elif grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF"; then
        ACCOUNTING=1  # a running cluster keeps its configuration (`restart` to change it)
    else
        ACCOUNTING=0
    fi
    start_munged
    if ((ACCOUNTING)); then
        start_mariadb
        start_slurmdbd
    fi
    if [[ -z $(pid_of slurmctld "$SLURMCTLD_PIDFILE") ]]; then
        slurmctld  # daemonises; recovers jobs from $STATE_DIR; registers the cluster with slurmdbd
        started slurmctld "$SLURMCTLD_PIDFILE"
    fi
    if [[ -z $(pid_of slurmd "$SLURMD_PIDFILE") ]]; then
        slurmd
        started slurmd "$SLURMD_PIDFILE"
    fi
    wait_idle
    local acct="no accounting"
    ((ACCOUNTING)) && acct="accounting on"
    echo "slurm-local: ready: partition $PARTITION, node $(hostname -s) $(node_state)" \
        "($(sinfo -h -o '%c CPUs, %m MB'), $acct; up in $((SECONDS - t0)) s)"
}

cmd_stop() {
    # Jobs still running would outlive slurmd (their slurmstepd and python processes): cancel them.
    if [[ -n $(pid_of slurmctld "$SLURMCTLD_PIDFILE") ]]; then
        local jobs
        jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # KillWait=5: they are gone within ~6 s
            wait_for 10 bash -c '[[ -z $(squeue -h -t RUNNING,COMPLETING -o %A) ]]' || true
        fi
    fi
    stop_daemon slurmd "$SLURMD_PIDFILE"
    stop_daemon slurmctld "$SLURMCTLD_PIDFILE"
    # Stopped whether or not KSIR_SLURM_ACCOUNTING is set now (it may have been at `start`).
    stop_daemon slurmdbd "$SLURMDBD_PIDFILE"
    stop_daemon mariadbd "$MARIADBD_PIDFILE"
    stop_daemon munged "$MUNGED_PIDFILE"
}

cmd_status() {
    if [[ -z $(pid_of slurmctld "$SLURMCTLD_PIDFILE") ]]; then
        say "slurmctld not running"
        return 3
    fi
    sinfo
    squeue
}

[[ $EUID -eq 0 ]] || die "must be run as root (it installs packages, writes /etc/slurm and starts system daemons)"
case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac

# Requeue, as checked on this cluster with ksir's launcher=slurm (submitit 1.5.4, Slurm 22.05):
# - `scancel --signal=USR2 <jobid>`: submitit's handler checkpoints (the launcher's `checkpoint`),
#   runs `scontrol requeue` and exits; the job runs again ~11 s later (cred_expire + sched_interval)
#   and ksir resumes from its .partial checkpoint. It counts as a timeout (max_num_timeout) only when
#   the job has run min(0.8 * timeout_min, timeout_min - 10) minutes, i.e. always if timeout_min <= 10.
# - `scontrol requeue <jobid>`: Slurm itself SIGTERMs and requeues the job; submitit only logs
#   "Bypassing signal SIGTERM"; nothing counts against max_num_timeout.
# - Proof: `scontrol show job <id>` Restarts=1; `sacct -D -j <id>` has a REQUEUED row; the job's
#   <sweep dir>/.submitit/<id>/<id>_0_log.out (arrays: <id>_<i>/<id>_<i>_0_log.out) has two
#   "Starting with JobEnvironment" lines; SLURM_RESTART_COUNT=1 in the rerun's environment.
