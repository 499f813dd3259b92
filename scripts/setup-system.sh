#!/usr/bin/env bash
# System services the fleet and the web console use (and their tests start on loopback ports):
#   mosquitto        Eclipse Mosquitto, the MQTT broker         (/usr/sbin/mosquitto, mosquitto_passwd)
#   docker-registry  CNCF Distribution, the OCI registry       (/usr/bin/docker-registry)
#   chromium         the browser the console's tests drive     (/usr/bin/chromium)
# On Debian/Ubuntu this installs the missing ones with apt-get (as root, or through sudo). Elsewhere it
# says what to install: macOS `brew install mosquitto distribution chromium`; Fedora `dnf install
# mosquitto chromium` plus the `registry` binary from the CNCF Distribution releases.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v docker-registry >/dev/null 2>&1 || command -v registry >/dev/null 2>&1 || need+=(docker-registry)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "setup-system: installing ${need[*]}" >&2
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts the packaged services; the tests and `slmops fleet up` run their own instances.
    for svc in mosquitto docker-registry; do
        if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
    done
else
    echo "setup-system: please install ${need[*]} with your system's package manager" >&2
    echo "  (Debian/Ubuntu: apt-get install mosquitto docker-registry chromium;" >&2
    echo "   macOS: brew install mosquitto distribution chromium)" >&2
    exit 1
fi
