#!/usr/bin/env bash
# Command 1 of the README: install what is missing, start libvirt, build the tiny image, create
# a NAT network and two machines, boot them and print their IPs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/kvmlab host setup
.venv/bin/kvmlab image build tiny
exec .venv/bin/kvmlab quickstart "$@"
