# bench/lib.sh - sourced by bench scripts that need a Redis and the hands.
# wp_bench_redis DIR PORT: a throw-away redis-server on loopback.
wp_bench_redis() {
    redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --dir "$1" --logfile "$1/redis.log" >/dev/null
}
# wp_bench_hands BUILD DIR: DIR/wp/warmpool-hands, bound into sandboxes as /.wp.
wp_bench_hands() {
    mkdir -p "$2/wp"
    cp "$1/warmpool-hands" "$2/wp/"
}
# wp_bench_template DIR NAME: DIR/NAME.json, a pool environment NAME whose
# sandboxes run the hands of DIR/wp (wp_bench_hands) as PID 1.
wp_bench_template() {
    cat >"$1/$2.json" <<JSON
{"name":"$2","rootfs":"host","workdir":"/work",
 "init_sets_hostname":true,"init":["/.wp/warmpool-hands","--socket","/run/warmpool/hands.sock","--workdir","/work",
         "--ready-file","/run/warmpool/hands.ready"],
 "ready_file":"/run/warmpool/hands.ready",
 "binds":[{"source":"$1/wp","target":"/.wp"}],
 "limits":{"memory_mb":128,"pids":64}}
JSON
}
# wp_free_port: a free loopback TCP port.
wp_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wp_bench_cleanup: the EXIT trap of a bench that started PIDS and a Redis on
# RPORT in the scratch dir T (kept with KEEP=1).
wp_bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$T"
}
