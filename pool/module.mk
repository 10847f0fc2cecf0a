pool_SRCS := pool/autoscale.c
