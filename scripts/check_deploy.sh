#!/usr/bin/env bash
# Validates deploy/ offline: the Kubernetes manifests rendered and checked against the API
# schemas (kubernetes-validate), against the workers' memory budgets and the rules in
# scripts/check_deploy.py, and by checkov (a static analyser of Kubernetes manifests: every
# check passes or is skipped in the manifest with its reason); nginx's configuration with
# `nginx -t` (tests/tests/proxy.rs runs it); compose.yaml with `docker compose config` where the
# compose plugin exists (else a YAML check).
# Needs: target/debug/steer (built by the test run), python3 with pyyaml, kubernetes-validate, checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
rendered=target/deploy-rendered
python3 scripts/check_deploy.py target/debug/steer "$rendered"
kubernetes-validate -k 1.31.0 --strict "$rendered"/base.yaml "$rendered"/hpa.yaml
checkov -d deploy/k8s --framework kubernetes --quiet --compact --skip-download
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
