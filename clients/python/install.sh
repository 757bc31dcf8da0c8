#!/usr/bin/env bash
# Installs the Python client (steer_client) into the running python3's environment (a venv,
# say) without writing into the source tree: the gRPC stubs are generated from proto/, and the
# wheel built, in a temporary copy.
#
#     bash clients/python/install.sh
#
# PYTHON names another interpreter; PIP_ARGS adds pip options (scripts/test.sh installs offline
# with "--no-deps --no-build-isolation").
set -euo pipefail
py=$(command -v "${PYTHON:-python3}")
case $py in /*) ;; *) py="$PWD/$py" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/clients/python/src"
cp -r "$root/proto" "$tmp/proto"
cp "$here/pyproject.toml" "$here/generate.py" "$tmp/clients/python/"
# The package's own files only (no stubs or build metadata an older in-tree build left).
tar -C "$here/src" --exclude=_proto --exclude='*.egg-info' --exclude=__pycache__ -cf - steer_client | tar -C "$tmp/clients/python/src" -xf -
"$py" -c 'import grpc_tools' 2>/dev/null || "$py" -m pip install --quiet "grpcio-tools==1.85.1"
"$py" "$tmp/clients/python/generate.py"
# shellcheck disable=SC2086
"$py" -m pip install --quiet ${PIP_ARGS:-} "$tmp/clients/python"
(cd "$tmp" && "$py" -c 'import steer_client; print("installed steer_client from", steer_client.__file__)')
