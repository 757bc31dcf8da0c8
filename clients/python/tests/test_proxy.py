"""deploy/nginx/steer.conf as shipped, with Debian's nginx, in front of three generation workers and
one activation worker (split mode, real processes on loopback): concurrent requests from the
Python client and from /v1/completions (steered: the generation worker asks the activation
worker it was given) are balanced per call over all three workers, counted from each worker's
own metrics; then a worker is killed while requests stream and none of them is lost."""
import concurrent.futures
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import openai
import pytest

from conftest import BINARY, ROOT, _free_port
from steer_client import SteerClient

TINY = str(ROOT / "fixtures" / "tiny-gpt2")
ADDITIONS = [(1, 4.0, "Love "), (1, -4.0, "Hate")]
STEERING = {"additions": [{"layer": l, "coeff": c, "text": t} for l, c, t in ADDITIONS]}


def _nginx():
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        pytest.fail("nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)")
    return found


class Worker:
    def __init__(self, role, name, *extra):
        self.port, self.metrics_port = _free_port(), _free_port()
        self.proc = subprocess.Popen(
            [BINARY, role, "--model", TINY, "--addr", f"127.0.0.1:{self.port}", "--metrics-addr",
             f"127.0.0.1:{self.metrics_port}", "--worker-id", name, "--grace-secs", "5", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()

    def ready(self):
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def metric(self, name, **labels):
        """The sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.get("/metrics")[1].splitlines():
            m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def generations(self):
        """Generation calls this worker answered: gRPC Generate and the HTTP route's GenerateFromTensors."""
        return sum(self.metric("steer_requests_total", service="steer.v1.GenerationService", method=m)
                   for m in ("Generate", "GenerateFromTensors"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture()
def stack(tmp_path):
    nginx = _nginx()
    # 24 clients at once each compute their steering (the OpenAI route through its generation worker).
    act = Worker("activation-worker", "act", "--max-activation-calls", "32")
    gens = [Worker("generation-worker", f"gen-{i}", "--vector-source", f"http://127.0.0.1:{act.port}") for i in range(3)]
    grpc_port, http_port = _free_port(), _free_port()
    conf = (ROOT / "deploy/nginx/steer.conf").read_text()
    conf = conf.replace("@GENERATION_SERVERS@", " ".join(f"server 127.0.0.1:{g.port} max_fails=1 fail_timeout=10s;" for g in gens))
    conf = conf.replace("@ACTIVATION_SERVER@", f"server 127.0.0.1:{act.port};")
    conf = conf.replace("@GRPC_LISTEN@", f"127.0.0.1:{grpc_port}").replace("@HTTP_LISTEN@", f"127.0.0.1:{http_port}")
    (tmp_path / "steer.conf").write_text(conf)
    temp = {d: tmp_path / d for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir()
    (tmp_path / "nginx.conf").write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
worker_processes 2;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    include {tmp_path}/steer.conf;
}}
""")
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not all(w.ready() for w in [act, *gens]):
        assert time.monotonic() < deadline, "workers did not become ready"
        assert all(w.proc.poll() is None for w in [act, *gens]), "a worker exited"
        time.sleep(0.1)
    yield {"act": act, "gens": gens, "grpc": f"127.0.0.1:{grpc_port}", "http": f"http://127.0.0.1:{http_port}", "dir": tmp_path}
    proxy.send_signal(signal.SIGQUIT)
    proxy.wait(timeout=30)
    for w in [act, *gens]:
        w.stop()


def _python_run(addr, seed, n_tokens):
    c = SteerClient(addr)
    try:
        _, steered = c.run("I hate you because", ADDITIONS, n_tokens=n_tokens, n_comparisons=1, seed=seed)
        return steered[0]
    finally:
        c.close()


def _openai_run(base, seed, n_tokens):
    # The SDK's default retries: a completion whose worker dies after its response started
    # (headers already relayed, so nginx cannot send it elsewhere) is asked again, from its seed.
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=2, timeout=120)
    r = oai.completions.create(model="steer", prompt="I hate you because", max_tokens=n_tokens, seed=seed,
                               temperature=1.0, top_p=0.3, frequency_penalty=1.0, extra_body={"steering": STEERING})
    return r.choices[0]


def _burst(stack, n_tokens, seeds):
    """12 Python-client and 12 OpenAI requests at once."""
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        py = [pool.submit(_python_run, stack["grpc"], s, n_tokens) for s in seeds]
        oa = [pool.submit(_openai_run, stack["http"], s, n_tokens) for s in seeds]
        return [f.result(timeout=300) for f in py], [f.result(timeout=300) for f in oa]


def test_the_proxy_balances_per_call_and_a_killed_worker_loses_no_request(stack):
    gens = stack["gens"]
    seeds = list(range(100, 112))
    py, oa = _burst(stack, 6, seeds)
    # Steered in split mode, and the same completion from either client.
    assert [c.text for c in py] == [c.text for c in oa]
    assert all(len(c.token_ids) == 6 for c in py)
    counts = [g.generations() for g in gens]
    assert sum(counts) == 24, counts
    assert all(n >= 2 for n in counts), f"not spread over all three workers: {counts}"
    assert {c.worker for c in py} == {"gen-0", "gen-1", "gen-2"}, [c.worker for c in py]

    # gRPC-Web (the dashboard's protocol) through the HTTP port: a unary call and its trailers.
    req = urllib.request.Request(f"{stack['http']}/steer.v1.GenerationService/GetModelInfo", data=b"\x00\x00\x00\x00\x00",
                                 headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    assert r.status == 200 and body[0] == 0 and b"grpc-status:0" in body.replace(b" ", b""), body

    # Longer generations; gen-0 is killed as soon as it streams one of them.
    long_seeds = list(range(200, 212))
    want_py, want_oa = _burst(stack, 200, long_seeds)
    before = [g.generations() for g in gens]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        py_f = [pool.submit(_python_run, stack["grpc"], s, 200) for s in long_seeds]
        oa_f = [pool.submit(_openai_run, stack["http"], s, 200) for s in long_seeds]
        deadline = time.monotonic() + 60
        while gens[0].generations() == before[0]:
            assert time.monotonic() < deadline, "gen-0 never started a request"
            time.sleep(0.002)
        gens[0].proc.kill()
        got_py = [f.result(timeout=300) for f in py_f]
        got_oa = [f.result(timeout=300) for f in oa_f]
    assert gens[0].proc.wait() != 0
    # Every request finished, with the tokens it has with all workers up: replayed from its seed.
    assert [c.text for c in got_py] == [c.text for c in want_py]
    assert [c.text for c in got_oa] == [c.text for c in want_oa]
    assert all(len(c.token_ids) == 200 for c in got_py)
    # The two survivors answered all 24, those cut on gen-0 again.
    survivors = sum(g.generations() - b for g, b in zip(gens[1:], before[1:]))
    assert survivors >= 24, survivors


class _Dns:
    """A DNS server on loopback that answers A queries for `name` with `addresses` (and nothing
    else): what a Kubernetes headless Service's name is to a client."""

    def __init__(self, name, addresses):
        import socket
        import struct
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        want = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"

        def serve():
            while True:
                try:
                    q, peer = self.sock.recvfrom(512)
                except OSError:
                    return
                qid, _, qd = struct.unpack(">HHH", q[:6])
                qname_end = q.index(b"\0", 12) + 1
                qtype = struct.unpack(">H", q[qname_end:qname_end + 2])[0]
                question = q[12:qname_end + 4]
                answers = []
                if q[12:qname_end].lower() == want and qtype == 1:
                    self.queries += 1
                    answers = [b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(a) for a in addresses]
                rcode = 0 if q[12:qname_end].lower() == want else 3
                head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
                self.sock.sendto(head + question + b"".join(answers), peer)

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.sock.close()


def test_a_dns_name_balances_each_call_over_every_address(tmp_path):
    """SteerClient(..., "dns://SERVER/name:port"): gRPC's round_robin over the three addresses
    the name resolves to, per call (not one worker per channel)."""
    port = _free_port()
    gens = []
    for i in (1, 2, 3):
        proc = subprocess.Popen(
            [BINARY, "serve", "--model", TINY, "--addr", f"127.0.0.{i}:{port}", "--worker-id", f"w{i}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "STEER_LOG": "warn"})
        gens.append(proc)
    dns = _Dns("steer-generation.test", ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    try:
        from conftest import wait_until_serving

        for i, proc in enumerate(gens, 1):
            c = SteerClient(f"127.0.0.{i}:{port}")
            wait_until_serving(c, proc)
            c.close()
        client = SteerClient(f"127.0.0.1:{port}", [f"dns://127.0.0.1:{dns.port}/steer-generation.test:{port}"])
        workers = set()
        for seed in range(12):
            _, steered = client.run("I hate you because", ADDITIONS, n_tokens=2, n_comparisons=1, seed=seed)
            workers.add(steered[0].worker)
        client.close()
        assert dns.queries >= 1
        assert workers == {"w1", "w2", "w3"}, workers
    finally:
        dns.close()
        for proc in gens:
            proc.kill()
            proc.wait()
