"""Checks deploy/k8s beyond schemas: memory limits against the workers' budgets (and the README's
table), CPU request = limit with threads from it, probes on /healthz and /readyz, no replicas in
the scaled Deployment, every metric named by a scaler, alert or dashboard exported by the workers.
Writes the base rendered (kustomization's namespace and images applied) to argv[2] for the
schema validation. argv[1]: the steer binary."""
import json
import math
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
steer, out_dir = sys.argv[1], pathlib.Path(sys.argv[2])
errors = []


def fail(msg):
    errors.append(msg)


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(kdir):
    """The resources of a kustomization (namespace and images applied), recursively."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    out = []
    for r in k.get("resources", []):
        p = kdir / r
        out += render(p) if p.is_dir() else docs(p)
    images = {i["name"]: f'{i.get("newName", i["name"])}:{i["newTag"]}' for i in k.get("images", [])}
    for d in out:
        if "namespace" in k and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = k["namespace"]
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            c["image"] = images.get(c["image"].split(":")[0], c["image"])
    return out


base = render(K8S)
by_kind = {}
for d in base:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

# Rendered for kubernetes-validate: the base, and each overlay's own core resources.
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / "base.yaml").write_text(yaml.safe_dump_all(base))
(out_dir / "hpa.yaml").write_text((K8S / "scaling/prometheus-adapter/hpa.yaml").read_text())

# One image reference, pinned (not latest).
images = {c["image"] for d in base for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])}
if len(images) != 1 or any(i.endswith(":latest") or ":" not in i for i in images):
    fail(f"every pod should run the one pinned image from kustomization.yaml, found {images}")

model = by_kind["ConfigMap"]["steer-model"]["data"]
dtype = model["STEER_DTYPE"]


def gib(q):
    m = re.fullmatch(r"(\d+)Gi", q)
    if not m:
        fail(f"memory {q}: state it in whole Gi")
        return 0
    return int(m.group(1))


def plan(role, args, dt):
    cmd = [steer, role, "--print-memory-plan", "--dtype", dt, "--model", model["STEER_MODEL"]] + args
    p = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return p["total"]


def limit_for(total):
    """The rule in deploy/k8s/README.md: budgets x 1.1 + 0.75 GiB, rounded up to a GiB."""
    return math.ceil((total * 1.1 + 0.75 * 2**30) / 2**30)


roles = {"steer-generation": "generation-worker", "steer-activation": "activation-worker"}
budget_args = {}
for name, role in roles.items():
    dep = by_kind["Deployment"][name]
    spec = dep["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "steer"]
    if c["args"][0] != role:
        fail(f"{name}: runs {c['args'][0]}, expected {role}")
    args = [a for a in c["args"][1:] if a.split("=")[0] in ("--max-batch-tokens", "--prefix-cache-mib", "--cache-mib", "--max-inflight-bytes")]
    budget_args[role] = args
    res = c["resources"]
    if res["requests"] != res["limits"]:
        fail(f"{name}: requests {res['requests']} != limits {res['limits']} (Guaranteed QoS, threads from the limit)")
    want = limit_for(plan(role, args, dtype))
    if gib(res["limits"]["memory"]) != want:
        fail(f"{name}: memory limit {res['limits']['memory']}, but the budgets of {args} in {dtype} need {want}Gi")
    env = {e["name"]: e for e in c.get("env", [])}
    threads = env.get("STEER_THREADS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
    if threads.get("resource") != "limits.cpu":
        fail(f"{name}: STEER_THREADS should come from limits.cpu")
    if env.get("HF_HUB_OFFLINE", {}).get("value") != "1":
        fail(f"{name}: the worker should run with HF_HUB_OFFLINE=1 (the init container fetched the model)")
    if [i["args"] for i in spec.get("initContainers", [])] != [["fetch"]]:
        fail(f"{name}: one init container running `steer fetch`")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or {c["readinessProbe"]["httpGet"]["path"], c["startupProbe"]["httpGet"]["path"]} != {"/readyz"}:
        fail(f"{name}: liveness on /healthz, readiness and startup on /readyz")
    grace = next(int(a.split("=")[1]) for a in c["args"] if a.startswith("--grace-secs="))
    if spec["terminationGracePeriodSeconds"] <= grace:
        fail(f"{name}: terminationGracePeriodSeconds must exceed --grace-secs ({grace})")
    sc = c["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]):
        fail(f"{name}: restricted securityContext")
    if name not in by_kind["PodDisruptionBudget"]:
        fail(f"{name}: no PodDisruptionBudget")
if "replicas" in by_kind["Deployment"]["steer-generation"]["spec"]:
    fail("steer-generation: no replicas (the autoscaler owns it)")
if by_kind["Deployment"]["steer-activation"]["spec"]["strategy"]["type"] != "Recreate":
    fail("steer-activation: Recreate (one replica on ReadWriteOnce volumes)")

# The README's table, row by row.
table = {}
for line in (K8S / "README.md").read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 5 and cells[0] in ("f32", "bf16", "f16", "q8_0"):
        table[cells[0]] = cells
if set(table) != {"f32", "bf16", "f16", "q8_0"}:
    fail(f"README.md's memory table should have a row per dtype, found {sorted(table)}")
for dt, (_, gen_b, gen_l, act_b, act_l) in table.items():
    for role, budgets, lim in (("generation-worker", gen_b, gen_l), ("activation-worker", act_b, act_l)):
        total = plan(role, budget_args[role], dt)
        if f"{total / 2**30:.2f} GiB" != budgets or f"{limit_for(total)}Gi" != lim:
            fail(f"README.md {dt} {role}: table says {budgets} / {lim}, the budgets give {total / 2**30:.2f} GiB / {limit_for(total)}Gi")

# Every metric a scaler, an alert or the dashboard names is one the workers export.
source = (ROOT / "services/telemetry/src/lib.rs").read_text()
exported = {"steer_" + n for n in re.findall(r'"([a-z_]+)"', source)}
exported |= {"steer_process_" + n for n in ("cpu_seconds_total", "resident_memory_bytes", "open_fds", "threads", "virtual_memory_bytes", "start_time_seconds", "max_fds")}
named = set()
for f in [K8S / "monitoring/alerts.yaml", K8S / "monitoring/grafana-dashboard.json", K8S / "scaling/keda/scaledobject.yaml", K8S / "scaling/prometheus-adapter/hpa.yaml"]:
    named |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bsteer_[a-z_]+", f.read_text())}
named -= {"steer_generation", "steer_activation"}  # service names, not metrics
missing = sorted(n for n in named if n not in exported)
if missing:
    fail(f"metrics named in deploy/k8s but not exported by the workers: {missing}")
json.loads((K8S / "monitoring/grafana-dashboard.json").read_text())

if errors:
    sys.exit("deploy/k8s:\n  " + "\n  ".join(errors))
print(f"deploy/k8s: limits match the budgets ({dtype}) and README's table; {len(named)} metrics named, all exported")
