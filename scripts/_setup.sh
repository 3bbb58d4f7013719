# Shared set-up for ./scripts/test and ./scripts/demo (sourced, not run).
# Idempotent: installs what is missing, and is a no-op (a second or so) when
# everything is already there.
set -euo pipefail

KG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KG_VENV="${KG_VENV:-$KG_ROOT/.venv}"
KG_APT_PACKAGES=(libsystemd-dev pkg-config systemd systemd-container nginx-light libnginx-mod-http-dav-ext prometheus openssl curl locales util-linux postgresql)

kg_log() { printf '[setup] %s\n' "$*" >&2; }

kg_apt() {
  local missing=()
  for p in "${KG_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    kg_log "missing Debian packages: ${missing[*]} (run as root, or install them with apt-get)"
    return 1
  fi
  kg_log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services (nginx, prometheus, postgresql) from starting;
  # the tests start their own throwaway PostgreSQL cluster (tests/pg.py).
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $created_policy -eq 1 ] && rm -f "$policy"
  return 0
}

kg_venv() {
  local stamp="$KG_VENV/.kei-gateway-installed" want
  want="$(cat "$KG_ROOT/setup.cfg" "$KG_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$KG_VENV/bin/python" ]; then
    kg_log "creating virtualenv $KG_VENV"
    python3 -m venv "$KG_VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    kg_log "installing kei-gateway and its test dependencies into $KG_VENV"
    local log="$KG_VENV/pip-install.log"
    if ! { "$KG_VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel &&
           "$KG_VENV/bin/python" -m pip install -q -e "$KG_ROOT[test]"; } >"$log" 2>&1; then
      cat "$log" >&2
      kg_log "pip install failed (log above, also in $log)"
      return 1
    fi
    echo "$want" >"$stamp"
  fi
}

kg_setup() {
  kg_apt
  kg_venv
  export PATH="$KG_VENV/bin:$PATH"
}
