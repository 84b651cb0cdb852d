#!/bin/sh
# Redis servers for `make REDIS=1 test` and bench_redis, on 127.0.0.1 only, with
# their own ports and directories (nothing persisted, memory bounded):
#   tests/redis_env.sh start [DIR]   a standalone server and a 3-master cluster;
#                                    prints the environment for the tests:
#                                    PKV_REDIS_URL=... PKV_REDIS_CLUSTER_URL=...
#   tests/redis_env.sh stop [DIR]    stops them (the pids recorded in DIR)
# DIR defaults to build/redis-env. Ports: PKV_REDIS_PORT (default 26379) for the
# standalone server, PKV_REDIS_CLUSTER_PORT (default 27001) and the next two for
# the cluster (each also listens on its port + 10000, the cluster bus).
set -eu
cmd=${1:-}
dir=${2:-build/redis-env}
port=${PKV_REDIS_PORT:-26379}
cport=${PKV_REDIS_CLUSTER_PORT:-27001}

wait_ping() { # port
    i=0
    while ! redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -le 100 ] || { echo "redis_env: no server on port $1" >&2; return 1; }
        sleep 0.1
    done
}

start_one() { # port dir extra-args...
    p=$1; d=$2; shift 2
    mkdir -p "$d"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$d" --save "" --appendonly no \
        --maxmemory 512mb --maxmemory-policy allkeys-lru --daemonize yes \
        --pidfile "$d/redis.pid" --logfile "$d/redis.log" "$@"
    wait_ping "$p"
}

case "$cmd" in
start)
    command -v redis-server >/dev/null || { echo "redis_env: redis-server is not installed" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    start_one "$port" "$dir/standalone"
    nodes=""
    for i in 0 1 2; do
        p=$((cport + i))
        start_one "$p" "$dir/cluster$i" --cluster-enabled yes --cluster-config-file "$dir/cluster$i/nodes.conf"
        nodes="$nodes 127.0.0.1:$p"
    done
    # shellcheck disable=SC2086
    redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes >"$dir/cluster-create.log" 2>&1
    i=0
    until redis-cli -h 127.0.0.1 -p "$cport" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; do
        i=$((i + 1))
        [ $i -le 100 ] || { echo "redis_env: the cluster did not become ok" >&2; exit 1; }
        sleep 0.1
    done
    echo "PKV_REDIS_URL=redis://127.0.0.1:$port"
    echo "PKV_REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:$cport,127.0.0.1:$((cport + 1)),127.0.0.1:$((cport + 2))"
    ;;
stop)
    for f in "$dir"/standalone/redis.pid "$dir"/cluster*/redis.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac
