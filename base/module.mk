base_SRCS := base/err.c base/log.c base/buf.c base/fs.c base/redis.c base/sentinel.c base/rcluster.c base/rcluster_sync.c base/net.c base/sse.c base/curlev.c base/ssl_err.c base/wipe.c
