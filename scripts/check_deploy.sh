#!/usr/bin/env bash
# Validates deploy/ offline: Kubernetes manifests against the API schemas (kubernetes-validate),
# compose.yaml with `docker compose config` where the compose plugin exists (else a YAML check).
set -euo pipefail
cd "$(dirname "$0")/.."
manifests=$(python3 -c "import yaml; print(' '.join('deploy/k8s/' + r for r in yaml.safe_load(open('deploy/k8s/kustomization.yaml'))['resources']))")
kubernetes-validate -k 1.31.0 --strict $manifests
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config -q
else
  python3 - <<'PY'
import yaml
c = yaml.safe_load(open("deploy/compose.yaml"))
assert set(c["services"]) == {"activation", "generation"}, c["services"].keys()
for name, s in c["services"].items():
    assert s["command"][0] in ("activation-worker", "generation-worker"), name
    assert "hf-cache:/models" in s["volumes"], name
print("deploy/compose.yaml: structure ok (docker compose plugin not installed)")
PY
fi
