#!/usr/bin/env bash
# System libraries for headless MuJoCo rendering through EGL (PyAV bundles its own ffmpeg).
# Idempotent: installs only what is missing, and only when it can (root or passwordless sudo).
set -euo pipefail
pkgs=(libegl1 libgl1 libgles2 libopengl0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: apt-get not found; please install: ${missing[*]}" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
echo "install_system_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
