"""Propagation across replicas on one PostgreSQL store: for each run, a token issued
through replica 1's admin API, the time until replica 2's service lets it through,
then its revocation through replica 1 and the time from that answer until replica 2
refuses it. Replica 2 is asked over a kept-alive connection, as fast as it
answers (each probe is one round trip, a fraction of a millisecond here; a
connection the revocation closed is opened again).

    python3 bench/cluster.py ADMIN1_CONFIG SERVICE2_PORT SERVICE RUNS

Prints JSON: runs, and p50 / p99 / max in ms for issue and revoke.
"""
import http.client
import json
import os
import statistics
import sys
import time
import tomllib

config, port2, service, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
base = os.path.dirname(os.path.abspath(config))
with open(config, "rb") as f:
    cfg = tomllib.load(f)
admin_host, admin_port = cfg["admin_listen"].rsplit(":", 1)
with open(os.path.join(base, cfg.get("data_dir", "keyway-data"), "admin.token")) as f:
    admin_token = f.read().strip()
admin_conn = http.client.HTTPConnection(admin_host, int(admin_port), timeout=10)
probe_conn = http.client.HTTPConnection("127.0.0.1", port2, timeout=10)


def admin(method, path, body=None):
    admin_conn.request(method, path, body=json.dumps(body) if body else None,
                       headers={"Authorization": f"Bearer {admin_token}",
                                "Content-Type": "application/json"})
    r = admin_conn.getresponse()
    answer = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {answer[:200]!r}")
    return json.loads(answer)


def status_on_2(token):
    try:
        probe_conn.request("GET", "/bench", headers={"Authorization": f"Bearer {token}"})
        r = probe_conn.getresponse()
        r.read()
        return r.status
    except (http.client.HTTPException, ConnectionError):
        # A revocation ends the connections its token opened: the next probe
        # opens another.
        probe_conn.close()
        return None


def until(token, want, limit=5.0):
    started = time.perf_counter()
    while status_on_2(token) != want:
        if time.perf_counter() - started > limit:
            sys.exit(f"replica 2 did not answer {want} within {limit} s")
    return (time.perf_counter() - started) * 1000


issue, revoke = [], []
for _ in range(runs):
    issued = admin("POST", "/v1/tokens", {"service": service, "principal": "bench", "ttl": "10m"})
    issue.append(until(issued["token"], 200))
    admin("POST", f"/v1/tokens/{issued['id']}/revoke")
    revoke.append(until(issued["token"], 401))


def summary(v):
    v = sorted(v)
    return {"p50_ms": statistics.median(v), "p99_ms": v[min(len(v) - 1, int(len(v) * 0.99))],
            "max_ms": v[-1]}


print(json.dumps({"runs": runs, "issue": summary(issue), "revoke": summary(revoke)}))
