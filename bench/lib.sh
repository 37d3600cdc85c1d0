# Shared by bench/run and bench/instructions: sourced, not run.

# A free port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something listens on 127.0.0.1:$1 (at most $2 seconds, 10 by default).
wait_port() {
  local tries=$(( ${2:-10} * 20 ))
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; exit 1
}

# An nginx config in $1 answering "ok" on 127.0.0.1:$2 with one worker (the upstream
# every HTTP measurement proxies to); its pid and log files beside it.
nginx_upstream() {
  cat >"$1" <<EOF
worker_processes 1;
pid $1.pid;
error_log $1.err warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "ok\n"; } }
}
EOF
}
