#!/usr/bin/env bash
# Validates deploy/ offline: Kubernetes manifests against the API schemas (kubernetes-validate),
# compose.yaml with `docker compose config` where the compose plugin exists (else a YAML check).
set -euo pipefail
cd "$(dirname "$0")/.."
manifests=$(python3 -c "import yaml; print(' '.join('deploy/k8s/' + r for r in yaml.safe_load(open('deploy/k8s/kustomization.yaml'))['resources']))")
kubernetes-validate -k 1.31.0 --strict $manifests
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/compose.yaml config -q
  mkdir -p deploy/secrets && touch deploy/secrets/{tls.crt,tls.key,tokens}
  docker compose -f deploy/compose.yaml -f deploy/compose.secure.yaml config -q
else
  python3 - <<'PY'
import yaml
c = yaml.safe_load(open("deploy/compose.yaml"))
assert set(c["services"]) == {"activation", "generation"}, c["services"].keys()
for name, s in c["services"].items():
    assert s["command"][0] in ("activation-worker", "generation-worker"), name
    assert "hf-cache:/models" in s.get("volumes", []), name
    assert s["restart"] == "unless-stopped", name
    # Published on the host's loopback unless STEER_PUBLISH_ADDR says otherwise.
    assert all(p.startswith("${STEER_PUBLISH_ADDR:-127.0.0.1}:") for p in s["ports"]), (name, s["ports"])
# The vector library on a volume; generation workers fetch library vectors from the activation worker.
assert "vectors:/vectors" in c["services"]["activation"]["volumes"]
assert c["services"]["generation"]["environment"]["STEER_VECTOR_SOURCE"] == "http://activation:50051"
sec = yaml.safe_load(open("deploy/compose.secure.yaml"))
for name in ("activation", "generation"):
    env = sec["services"][name]["environment"]
    assert {"STEER_TLS_CERT", "STEER_TLS_KEY", "STEER_AUTH_TOKENS"} <= set(env), name
assert sec["services"]["generation"]["environment"]["STEER_VECTOR_SOURCE"].startswith("https://")
print("deploy/compose.yaml, compose.secure.yaml: structure ok (docker compose plugin not installed)")
PY
fi
