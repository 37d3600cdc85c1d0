"""Revocation latency: for each run, a token, a `keyway connect` stream to a Redis
service through the gateway (checked with PING), then `POST /v1/tokens/{id}/revoke`
on the admin API; the time from its answer to the stream's end (EOF or reset).

    python3 bench/revoke.py KEYWAY CONFIG TUNNEL SERVICE RUNS
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import tomllib

kw, config, tunnel, service, runs = sys.argv[1:6]
runs = int(runs)
base = os.path.dirname(os.path.abspath(config))
with open(config, "rb") as f:
    cfg = tomllib.load(f)
admin_host, admin_port = cfg["admin_listen"].rsplit(":", 1)
data = os.path.join(base, cfg.get("data_dir", "keyway-data"))
with open(os.path.join(data, "admin.token")) as f:
    admin_token = f.read().strip()


def admin(method, path, body=None):
    c = http.client.HTTPConnection(admin_host, int(admin_port), timeout=10)
    c.request(method, path, body=json.dumps(body) if body else None,
              headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"})
    r = c.getresponse()
    answer = r.read()
    c.close()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status}")
    return json.loads(answer)


took = []
for _ in range(runs):
    issued = admin("POST", "/v1/tokens", {"service": service, "principal": "bench", "ttl": "10m"})
    env = dict(os.environ, KEYWAY_TOKEN=issued["token"])
    proc = subprocess.Popen([kw, "connect", service, "--gateway", tunnel, "--ca", os.path.join(data, "ca.pem")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        local = proc.stdout.readline().strip().rsplit(":", 1)[1]
        s = socket.create_connection(("127.0.0.1", int(local)), timeout=10)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        if s.recv(16) != b"+PONG\r\n":
            sys.exit("the stream did not open")
        admin("POST", f"/v1/tokens/{issued['id']}/revoke")
        answered = time.perf_counter()
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        took.append((time.perf_counter() - answered) * 1000)
        s.close()
    finally:
        proc.kill()
        proc.wait()

took.sort()
print("runs", len(took))
print("p50_ms", f"{statistics.median(took):.3f}")
print("p99_ms", f"{took[min(len(took) - 1, int(len(took) * 0.99))]:.3f}")
print("max_ms", f"{took[-1]:.3f}")
