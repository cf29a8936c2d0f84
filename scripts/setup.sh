#!/usr/bin/env bash
# Idempotent machine setup for routemesh development and CI on Debian 12 (run as root):
# installs the real BGP peers and tools the test lab drives, keeps their packaged services
# stopped, and builds the project venv. A second run with everything present takes ~1s.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(
    bird2 gobgpd frr etcd-server prometheus iptables ipset containernetworking-plugins
    iproute2 tcpdump procps psmisc
    # Not in the original list but needed: ping for lab reachability checks, and venv
    # support, which Debian ships separately from python3.
    iputils-ping python3 python3-venv
)
# Services the packages above ship. Tests start their own instances inside namespaces, so a
# packaged one would only hold ports, sockets and pid files the lab expects to be free.
SERVICES=(bird frr gobgpd etcd prometheus)

log() { printf 'setup: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (apt-get and network namespaces need it)" >&2
    exit 1
fi

have_systemd() { [[ -d /run/systemd/system ]]; }

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        # dpkg -s also reports removed-but-configured packages; require "install ok installed".
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            printf '%s\n' "$p"
        fi
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages already installed"
        return
    fi
    log "installing: ${missing[*]}"
    # Without systemd, maintainer scripts start services via invoke-rc.d; a policy-rc.d that
    # exits 101 forbids that. Only add one if the machine has none, and remove only ours.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    if [[ $own_policy -eq 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}

kill_pidfile() {
    local f=$1 pid
    [[ -r $f ]] || return 0
    pid=$(tr -dc '0-9' <"$f")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        log "stopping packaged daemon pid $pid ($f)"
        kill "$pid" 2>/dev/null || true
    fi
}

kill_user_daemon() {
    # Packaged daemons run as their own system user; the lab runs its instances as root
    # (FRR's drop to "frr" happens with -N pathspaces we check separately). Matching on the
    # user keeps us from touching anyone's test daemons.
    local user=$1 name=$2 pid
    id "$user" >/dev/null 2>&1 || return 0
    for pid in $(pgrep -u "$user" -x "$name" || true); do
        log "stopping packaged $name pid $pid (user $user)"
        kill "$pid" 2>/dev/null || true
    done
}

stop_packaged_services() {
    local s
    if have_systemd; then
        for s in "${SERVICES[@]}"; do
            if systemctl list-unit-files "$s.service" >/dev/null 2>&1; then
                systemctl disable --now "$s.service" >/dev/null 2>&1 || true
            fi
        done
        return
    fi
    # No systemd: keep sysvinit from starting them at boot, then stop what is running now.
    # Never use the init scripts' "stop": bird's kills every process named bird, including
    # other people's lab peers.
    for s in "${SERVICES[@]}"; do
        if [[ -x /etc/init.d/$s ]]; then
            update-rc.d "$s" disable >/dev/null 2>&1 || true
        fi
    done
    kill_user_daemon bird bird
    kill_user_daemon etcd etcd
    kill_user_daemon prometheus prometheus
    # FRR's packaged instance keeps pid files at the top of /run/frr; lab instances use
    # pathspaces (/run/frr/<name>/) and are not affected.
    local f
    for f in /run/frr/*.pid; do
        [[ -e $f ]] && kill_pidfile "$f"
    done
    kill_pidfile /run/gobgpd.pid
}

make_venv() {
    if [[ ! -x .venv/bin/python ]]; then
        local py
        py=$(command -v python3.11 || command -v python3)
        log "creating .venv with $py"
        "$py" -m venv .venv
    fi
    # Reinstalling costs several seconds, so only do it when the editable install, the test
    # extras or a runtime dependency is missing, or pyproject changed since the last install.
    local stamp=.venv/.routemesh-setup-stamp
    if [[ -f $stamp && $stamp -nt pyproject.toml ]] &&
        .venv/bin/python -c 'import bgpd, pytest, pytest_asyncio, pytest_timeout, hypothesis, exabgp, pyroute2, aetcd, prometheus_client' 2>/dev/null &&
        [[ -x .venv/bin/ruff ]]; then
        log "venv up to date"
        return
    fi
    log "installing project into .venv"
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch "$stamp"
}

install_packages
stop_packaged_services
make_venv
log "done"
