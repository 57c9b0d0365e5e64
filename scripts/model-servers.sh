#!/usr/bin/env bash
# Real model servers for tests/test_real_servers.py and bench/server_bench.py, each in its own
# virtualenv under .servers/ (their dependencies clash with ours and with each other: MLServer
# 1.7.1 needs pandas < 3 and uvloop < 0.22, which its release predates; MLflow brings its own
# web stack; PyTriton pins numpy < 2). Triton is NVIDIA's own `tritonserver` binary, which the
# nvidia-pytriton wheel carries (it runs on CPU; no Docker needed).
#
#   scripts/model-servers.sh install     create .servers/{mlserver,kserve,mlflow,triton} (cached)
#
# SHADOWDIFF_SERVERS_HOME puts the virtualenvs elsewhere.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
home="${SHADOWDIFF_SERVERS_HOME:-$root/.servers}"

venv() {  # venv NAME PACKAGE...
  local name="$1"; shift
  if [ -f "$home/$name/.complete" ]; then return 0; fi
  rm -rf "${home:?}/$name"
  python3 -m venv "$home/$name"
  "$home/$name/bin/pip" install --quiet --disable-pip-version-check "$@"
  touch "$home/$name/.complete"
}

install() {
  mkdir -p "$home"
  # the same scikit-learn everywhere: each server fits the tests' pipeline itself, and the
  # same version makes the same model from the same data
  venv mlserver mlserver==1.7.1 mlserver-sklearn==1.7.1 scikit-learn==1.9.1 "pandas<3" "uvloop<0.22" &
  venv kserve kserve==0.21.0 scikit-learn==1.9.1 &
  venv mlflow mlflow==3.17.2 scikit-learn==1.9.1 &
  venv triton nvidia-pytriton==0.7.0 scikit-learn==1.9.1 "pandas<3" &
  local failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return "$failed"
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
