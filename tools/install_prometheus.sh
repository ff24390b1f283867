#!/usr/bin/env bash
# `make reliability`: Debian's Prometheus package (/usr/bin/prometheus and promtool) for
# tests/reliability/test_7_prometheus.py, which starts a Prometheus process of its own. The
# package's service is not started: where no policy-rc.d forbids it already, one does for the
# length of the install. Needs root (or sudo) and Debian's package lists.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus
