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
