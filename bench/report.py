"""Turns bench/run's raw lines (section, target, metric, value) into Markdown tables:
medians with min–max over the runs, and ratios computed from this invocation only.

    python3 bench/report.py RESULTS RUNS
"""
import statistics
import sys
from collections import defaultdict

path, runs = sys.argv[1], sys.argv[2]
data = defaultdict(list)
text = {}
for line in open(path):
    section, target, metric, value = line.rstrip("\n").split("\t", 3)
    try:
        data[(section, target, metric)].append(float(value))
    except ValueError:
        text[(section, target, metric)] = value


def med(section, target, metric):
    v = data.get((section, target, metric))
    return statistics.median(v) if v else None


def cell(section, target, metric, fmt="{:,.0f}"):
    v = data.get((section, target, metric))
    if not v:
        return "—"
    m = fmt.format(statistics.median(v))
    if len(v) > 1:
        return f"{m} ({fmt.format(min(v))}–{fmt.format(max(v))})"
    return m


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


def targets(section):
    seen = []
    for s, t, _ in list(data) + list(text):
        if s == section and t not in seen:
            seen.append(t)
    return seen


print(f"One invocation of `bench/run`, {runs} run(s) per figure: median (min–max).")
print(f"Host tuning: {text.get(('host', 'tuning', 'glibc'), 'none')}.\n")

if targets("http"):
    print("### HTTP: wrk -t1 -c64, one worker per proxy\n")
    print("| target | req/s | p50 ms | p99 ms | p99.9 ms | vs direct | vs nginx | vs HAProxy | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    direct, nginx, haproxy = (med("http", t, "rps") for t in ("direct", "nginx", "haproxy"))
    for t in ("direct", "keyway", "keyway-batched", "nginx", "haproxy", "hyper-floor",
              "hyper-floor-commit", "hyper-floor-bound"):
        rps = med("http", t, "rps")
        if rps is None:
            continue
        print(f"| {t} | {cell('http', t, 'rps')} | {cell('http', t, 'p50_ms', '{:.2f}')} "
              f"| {cell('http', t, 'p99_ms', '{:.2f}')} | {cell('http', t, 'p999_ms', '{:.2f}')} "
              f"| {ratio(rps, direct)} | {ratio(rps, nginx)} | {ratio(rps, haproxy)} "
              f"| {cell('http', t, 'errors')} |")
    kw, best = med("http", "keyway", "rps"), max(nginx or 0, haproxy or 0)
    if kw and best:
        print(f"\nKeyway / better of nginx and HAProxy: **{kw / best:.2f}×** (goal ≥ 1.20×).")
    floor = med("http", "hyper-floor", "rps")
    if kw and floor and best:
        print(f"The floor (a bare hyper proxy with the peers' check, no Keyway): "
              f"{floor / best:.2f}× the better peer; Keyway is {kw / floor:.2f}× the floor.")
    floor_commit = med("http", "hyper-floor-commit", "rps")
    if kw and floor_commit:
        print(f"The floor with a row committed per answer (the same proxy; SQLite, "
              f"synchronous = FULL, group commit on a thread of its own): Keyway "
              f"(`commit`) is **{kw / floor_commit:.2f}×** it; p99 "
              f"{cell('http', 'keyway', 'p99_ms', '{:.2f}')} ms against "
              f"{cell('http', 'hyper-floor-commit', 'p99_ms', '{:.2f}')} ms.")
    floor_bound = med("http", "hyper-floor-bound", "rps")
    if floor and floor_bound and best:
        print(f"The floor with an upstream connection bound to each client connection "
              f"(no pool, driven in the client connection's task): {floor_bound / floor:.2f}× "
              f"the pooled floor, {floor_bound / best:.2f}× the better peer.")
    batched = med("http", "keyway-batched", "rps")
    if kw and batched:
        print(f"Audit durability: `commit` (the default: an answer waits for its event's "
              f"fsync, shared by a group) is {kw / batched:.2f}× `batched` in req/s; p99 "
              f"{cell('http', 'keyway', 'p99_ms', '{:.2f}')} ms against "
              f"{cell('http', 'keyway-batched', 'p99_ms', '{:.2f}')} ms.")
    rss = med("http", "keyway", "rss_kib")
    if rss:
        print(f"Keyway's resident memory after the HTTP runs: {rss / 1024:.0f} MiB.")
    print()

if targets("conn"):
    print("### New connections: one request per connection (wrk -c16, `Connection: close`)\n")
    print("| target | connections/s | vs direct |")
    print("|---|---|---|")
    d = med("conn", "direct", "conn_per_s")
    for t in targets("conn"):
        print(f"| {t} | {cell('conn', t, 'conn_per_s')} | {ratio(med('conn', t, 'conn_per_s'), d)} |")
    print()

if targets("mcp"):
    print("### MCP: tool calls (FastMCP, stateless JSON), wrk -t1 -c16\n")
    print("| target | calls/s | p50 ms | p99 ms | vs direct |")
    print("|---|---|---|---|---|")
    d = med("mcp", "direct", "rps")
    for t in targets("mcp"):
        print(f"| {t} | {cell('mcp', t, 'rps')} | {cell('mcp', t, 'p50_ms', '{:.2f}')} "
              f"| {cell('mcp', t, 'p99_ms', '{:.2f}')} | {ratio(med('mcp', t, 'rps'), d)} |")
    print()

if targets("scale"):
    n = med("scale", "keyway", "idle_conns")
    before, idle = med("scale", "keyway", "rss_before_kib"), med("scale", "keyway", "rss_idle_kib")
    print("### Idle connections\n")
    print(f"{n:,.0f} idle keep-alive connections, each authenticated and proxied once: "
          f"Keyway's resident memory {idle / 1024:.0f} MiB (before: {before / 1024:.0f} MiB; "
          f"{(idle - before) / max(n, 1):.1f} KiB per connection). Goal for 10,000: under 200 MiB.\n")

if targets("tcp"):
    print("### TCP: iperf3 bulk throughput, redis-benchmark PING round trips (one connection)\n")
    print("| path | Gbit/s | vs direct | vs socat | vs rathole TLS | round trips/s | vs direct |")
    print("|---|---|---|---|---|---|---|")
    d, so, rh = (med("tcp", t, "gbits") for t in ("direct", "socat", "rathole-tls"))
    rd = med("tcp", "direct", "rtt_per_s")
    for t in targets("tcp"):
        if t.startswith("aes-128-gcm"):  # a rate, not a path: in the floor below
            continue
        g = med("tcp", t, "gbits")
        if g is None and (("tcp", t, "skipped") in text):
            print(f"| {t} | skipped: {text[('tcp', t, 'skipped')]} | | | | | |")
            continue
        print(f"| {t} | {cell('tcp', t, 'gbits', '{:.2f}')} | {ratio(g, d)} | {ratio(g, so)} "
              f"| {ratio(g, rh)} | {cell('tcp', t, 'rtt_per_s')} | {ratio(med('tcp', t, 'rtt_per_s'), rd)} |")
    kw, agent, chain, chain3 = (med("tcp", t, "gbits") for t in
                                ("keyway", "keyway-agent", "socat-64k-chain", "socat-64k-chain3"))
    print(f"\nKeyway's tunnel / socat: **{ratio(kw, so)}** (goal ≥ 1×), / rathole TLS: "
          f"**{ratio(kw, rh)}** (goal ≥ 2×); through an agent / rathole TLS: **{ratio(agent, rh)}** "
          "(goal ≥ 1.5×).")
    if kw and chain:
        print(f"The tunnel / two chained socats with 64 KiB buffers (its three TCP connections, "
              f"without TLS): {ratio(kw, chain)}; the 2× rathole goal is "
              f"{ratio(2 * rh, chain) if rh else '—'} of that floor.")
    if agent and chain3:
        print(f"Through an agent / three chained socats (its four TCP connections, without TLS): "
              f"**{ratio(agent, chain3)}** (goal ≥ 0.85×); the 1.5× rathole goal is "
              f"{ratio(1.5 * rh, chain3) if rh else '—'} of that floor.")
    tls2, tls3 = (med("tcp", t, "gbits") for t in ("socat-tls-chain2", "socat-tls-chain3"))
    if kw and tls2:
        print(f"The tunnel / two socats with TLS between them (its shape and its two AES-GCM "
              f"passes a byte, on OpenSSL): {ratio(kw, tls2)}.")
    gcm, gcm_openssl = (med("tcp", t, "gbytes") for t in ("aes-128-gcm", "aes-128-gcm-openssl"))
    if agent and chain3 and gcm:
        # Seconds of the core per GB: the three socats' (their kernel and copies),
        # plus four AES-GCM passes at this core's rate in ring, which Keyway's TLS runs on.
        floor = 8 / (8 / chain3 + 4 / gcm)
        openssl = f"; OpenSSL's, which the socats use: {gcm_openssl:.2f} GB/s" if gcm_openssl else ""
        print(f"The agent path's floor on this core, the three-socat chain plus its four "
              f"AES-GCM passes a byte at {gcm:.2f} GB/s (ring on one core{openssl}): {floor:.2f} "
              f"Gbit/s; through an agent / that floor: **{ratio(agent, floor)}**; the 0.85× goal "
              f"is {ratio(0.85 * chain3, floor)} of it.")
    if agent and tls3 and chain3:
        print(f"Through an agent / three socats with TLS between them (its shape and its four "
              f"AES-GCM passes a byte): **{ratio(agent, tls3)}**; that floor is itself "
              f"{ratio(tls3, chain3)} of the three-socat chain, so the 0.85× goal is "
              f"{ratio(0.85 * chain3, tls3)} of what the shape carries encrypted.")
    print()

if targets("pg"):
    print("### PostgreSQL: pgbench -S -c8 -j1 (simple protocol)\n")
    print("| path | tps | vs direct | vs socat |")
    print("|---|---|---|---|")
    d, so = med("pg", "direct", "tps"), med("pg", "socat", "tps")
    for t in targets("pg"):
        v = med("pg", t, "tps")
        print(f"| {t} | {cell('pg', t, 'tps')} | {ratio(v, d)} | {ratio(v, so)} |")
    print()

if targets("revoke"):
    print("### Revocation: `revoke` answered → live tunnel stream cut\n")
    print(f"{cell('revoke', 'keyway', 'runs')} runs: p50 {cell('revoke', 'keyway', 'p50_ms', '{:.2f}')} ms, "
          f"p99 {cell('revoke', 'keyway', 'p99_ms', '{:.2f}')} ms, max {cell('revoke', 'keyway', 'max_ms', '{:.2f}')} ms "
          "(goal ≤ 50 ms).\n")

if targets("bulk"):
    print("### Bulk revocation: `keyway token revoke --principal` over many tokens\n")
    print(f"{cell('bulk', 'keyway', 'tokens')} tokens (issued at {cell('bulk', 'keyway', 'issued_per_s')}/s "
          f"over the admin API): {text.get(('bulk', 'keyway', 'refused_at_100ms'), '—')} sampled tokens "
          f"refused 100 ms after the command started (goal: all); the command took "
          f"{cell('bulk', 'keyway', 'revoke_s', '{:.2f}')} s (goal ≤ 2 s for 100,000).\n")

if targets("cluster"):
    print("### Cluster: two replicas on one PostgreSQL store\n")
    ms = lambda t, m: cell("cluster", t, m, "{:.1f}")
    print(f"{cell('cluster', 'revoke', 'runs')} tokens issued, then revoked, through replica 1 and "
          f"probed on replica 2. Revocation (answered on 1 → refused on 2): p50 {ms('revoke', 'p50_ms')} ms, "
          f"p99 {ms('revoke', 'p99_ms')} ms, max {ms('revoke', 'max_ms')} ms (goal p99 ≤ 100 ms; "
          f"the contract ≤ 1 s). Issue (answered on 1 → accepted on 2): p50 {ms('issue', 'p50_ms')} ms, "
          f"p99 {ms('issue', 'p99_ms')} ms.\n")
    pg, lite = med("cluster", "postgres", "rps"), med("cluster", "sqlite", "rps")
    if pg and lite:
        print("| store | req/s (wrk -t1 -c64) | vs SQLite |")
        print("|---|---|---|")
        print(f"| PostgreSQL (a replica) | {cell('cluster', 'postgres', 'rps')} | {ratio(pg, lite)} |")
        print(f"| SQLite (one gateway) | {cell('cluster', 'sqlite', 'rps')} | {ratio(lite, lite)} |")
        print()

if targets("tokens"):
    print("### A million live tokens: loaded at start, resident memory\n")
    print(f"{cell('tokens', 'keyway', 'tokens')} live tokens in the SQLite store: the gateway answered "
          f"{cell('tokens', 'keyway', 'load_s', '{:.2f}')} s after its start (goal: a few seconds), "
          f"resident {cell('tokens', 'keyway', 'rss_mib')} MiB (goal < 1,024 MiB for 1,000,000; "
          f"{cell('tokens', 'keyway', 'baseline_rss_mib')} MiB with one token), "
          f"{cell('tokens', 'keyway', 'bytes_per_token')} bytes a token.\n")

if ("token", "keyway", "estimate") in text:
    print("### Token check (criterion, in process, 1,000,000 tokens indexed)\n")
    print(f"{text[('token', 'keyway', 'estimate')]} per check: criterion's estimate, the "
          "middle of its `time:` interval (goal < 1 µs).\n")
