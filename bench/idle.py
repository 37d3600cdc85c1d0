"""Opens N keep-alive connections to a Keyway HTTP service, sends one authenticated
request on each (so every one is checked and proxied), keeps them all open and idle,
and prints the gateway's resident memory then.

To a loopback gateway the connections come from 127.0.0.1 to 127.0.0.8 in turn: one
source may hold only a quarter of a data listener's slots (DATA_CAPS in
crates/keyway-gateway/src/runtime.rs).

    python3 bench/idle.py HOST PORT TOKEN N GATEWAY_PID
"""
import resource
import selectors
import socket
import sys
import time

host, port, token, n, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
request = f"GET /idle HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()

held = []
batch = 250
SOURCES = 8
deadline = time.time() + 120
while len(held) < n and time.time() < deadline:
    sel = selectors.DefaultSelector()
    pending = {}
    for i in range(min(batch, n - len(held))):
        source = (f"127.0.0.{1 + (len(held) + i) % SOURCES}", 0) if host.startswith("127.") else None
        s = socket.create_connection((host, port), source_address=source)
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=5):
            s = key.fileobj
            data = s.recv(65536)
            pending[s] += data
            if not data or b"\r\n\r\nok\n" in pending[s]:
                if not pending[s].startswith(b"HTTP/1.1 200"):
                    sys.exit(f"a request was not answered 200: {pending[s][:80]!r}")
                sel.unregister(s)
                held.append(s)
                del pending[s]
    sel.close()

time.sleep(2)  # let the gateway settle
with open(f"/proc/{pid}/status") as f:
    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
print("held", len(held))
print("rss_kib", rss)
for s in held:
    s.close()
