"""Bulk revocation: N tokens for one principal issued over the admin API, then
`keyway token revoke --principal` as an operator runs it; 100 ms after the command
starts, a sample of 40 of the tokens is tried against the service (each should be
refused, 401), and the command's wall time is taken.

    python3 bench/bulk_revoke.py KEYWAY CONFIG SERVICE_PORT N

Prints `tokens N`, `issued_per_s`, `refused_at_100ms K/40`, `revoke_s S`.
"""
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import tomllib

kw, config, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = os.path.dirname(os.path.abspath(config))
with open(config, "rb") as f:
    cfg = tomllib.load(f)
admin_host, admin_port = cfg["admin_listen"].rsplit(":", 1)
service = next(iter(cfg["services"]))
with open(os.path.join(base, cfg.get("data_dir", "keyway-data"), "admin.token")) as f:
    admin_token = f.read().strip()

sample, lock = [], threading.Lock()
step = max(1, n // 40)


def issue(start, count):
    c = http.client.HTTPConnection(admin_host, int(admin_port), timeout=30)
    body = json.dumps({"service": service, "principal": "bulk", "ttl": "1h"})
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    for i in range(start, start + count):
        c.request("POST", "/v1/tokens", body=body, headers=headers)
        r = c.getresponse()
        answer = r.read()
        if r.status != 201 and r.status != 200:
            sys.exit(f"issue: {r.status} {answer[:200]!r}")
        if i % step == 0:
            with lock:
                sample.append(json.loads(answer)["token"])


threads = 8
t0 = time.monotonic()
workers = [threading.Thread(target=issue, args=(k * (n // threads), n // threads)) for k in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
issued_s = time.monotonic() - t0
sample = sample[:40]


def status(token):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/bulk", headers={"Authorization": f"Bearer {token}"})
    s = c.getresponse().status
    c.close()
    return s


assert all(status(t) == 200 for t in sample), "a sampled token did not work before"
start = time.monotonic()
cmd = subprocess.Popen([kw, "token", "revoke", "--principal", "bulk", "--config", config],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
time.sleep(0.1)
refused = sum(status(t) == 401 for t in sample)
_, err = cmd.communicate(timeout=300)
took = time.monotonic() - start
if cmd.returncode != 0:
    sys.exit(f"keyway token revoke failed: {err.decode()[:300]}")
print(f"tokens {n}")
print(f"issued_per_s {n / issued_s:.0f}")
print(f"refused_at_100ms {refused}/{len(sample)}")
print(f"revoke_s {took:.2f}")
