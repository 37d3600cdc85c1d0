"""Memory per live token: a store holding N live tokens, loaded by a gateway at start.

    python3 bench/tokens.py KEYWAY WORKDIR N

One token is issued through the CLI (the real shape of a row: its grant, its keyed
hash); N - 1 more rows like it, each with its own id, principal and hash, are then
written into the SQLite store directly (issuing a million through the API would take
the run's whole time). The gateway is started on that store: how long until it
answers, its resident memory then, and the real token still answers 200 through it
(the other rows' hashes match no secret, so only the memory and the load are theirs).

Prints `tokens N`, `load_s S`, `rss_mib M`, `bytes_per_token B`, `baseline_rss_mib M`.
"""
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def wait_answer(url, token, proc, limit=300):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode})")
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, time.monotonic() - start
        except urllib.error.HTTPError as e:
            return e.code, time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise SystemExit("the gateway did not answer")


kw, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
admin, listen, upstream = free_port(), free_port(), free_port()
config = os.path.join(work, "keyway.toml")
with open(config, "w") as f:
    f.write(f'''data_dir = "data"
admin_listen = "127.0.0.1:{admin}"
max_ttl = "24h"
[services.bench]
protocol = "http"
listen = "127.0.0.1:{listen}"
upstream = "http://127.0.0.1:{upstream}"
max_ttl = "24h"
''')
# The upstream: a socket that answers every request with 200.
up = subprocess.Popen([sys.executable, "-c", f'''
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers(); self.wfile.write(b"ok\\n")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {upstream}), H).serve_forever()
'''])
env = dict(os.environ, TOKIO_WORKER_THREADS="1")
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", upstream), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)


def gateway():
    return subprocess.Popen([kw, "--log", "warn", "gateway", "--config", config],
                            env=env, stderr=open(os.path.join(work, "gateway.log"), "a"))


g = None
try:
    g = gateway()
    url = f"http://127.0.0.1:{listen}/bench"
    wait_answer(url, "none", g)
    token = subprocess.run([kw, "token", "issue", "--service", "bench", "--principal", "bench",
                            "--ttl", "23h", "--config", config],
                           check=True, capture_output=True, text=True).stdout.strip()
    status, _ = wait_answer(url, token, g)
    assert status == 200, status
    baseline = rss_kib(g.pid)
    g.terminate()
    g.wait(60)

    db = sqlite3.connect(os.path.join(work, "data", "keyway.db"))
    cols = [r[1] for r in db.execute("PRAGMA table_info(tokens)")]
    # The issued token's row (the store also holds the admin credential, made at
    # the first start, which has no grant).
    row = dict(zip(cols, db.execute("SELECT * FROM tokens WHERE principal = 'bench'").fetchone()))
    assert row["grant_json"], "the issued token has a grant"
    ids = set()
    batch = []
    for i in range(n - 1):
        while True:
            tid = secrets.token_urlsafe(12)[:16]
            if tid not in ids and tid != row["id"]:
                ids.add(tid)
                break
        r = dict(row, id=tid, principal=f"user{i}", hash=secrets.token_bytes(32))
        batch.append(tuple(r[c] for c in cols))
        if len(batch) == 50_000:
            db.executemany(f"INSERT INTO tokens ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", batch)
            batch = []
    if batch:
        db.executemany(f"INSERT INTO tokens ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", batch)
    db.commit()
    db.close()

    g = gateway()
    status, load_s = wait_answer(url, token, g)
    assert status == 200, f"the real token answered {status} among {n}"
    time.sleep(1)
    rss = rss_kib(g.pid)
    print(f"tokens {n}")
    print(f"load_s {load_s:.2f}")
    print(f"rss_mib {rss / 1024:.0f}")
    print(f"baseline_rss_mib {baseline / 1024:.0f}")
    print(f"bytes_per_token {(rss - baseline) * 1024 / n:.0f}")
    g.terminate()
    g.wait(60)
finally:
    up.kill()
    if g is not None and g.poll() is None:
        g.kill()
