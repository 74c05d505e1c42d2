#!/usr/bin/env bash
# What the test suite needs from the system, declared once (scripts/test.sh runs this first):
#   openssh-server  sshd for the fleet harness's hosts (tests/support/fleet_harness.py)
#   systemd         systemd-analyze, to verify the fleet's unit files (tests/test_fleet_units.py)
# Debian/Ubuntu only; a package already installed is left alone. Its package scripts must not
# start a system-wide sshd on the CI machine, hence the policy-rc.d while it installs.
set -euo pipefail
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "ci-deps: apt-get not found; install: ${need[*]}" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  created=1
fi
trap '[ $created -eq 1 ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
