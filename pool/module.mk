pool_SRCS := pool/autoscale.c pool/scripts.c pool/node.c pool/node_sandbox.c pool/node_image.c pool/node_inbox.c pool/node_memory.c \
             pool/node_reconcile.c pool/node_reap.c pool/node_shutdown.c pool/config.c pool/client.c pool/relay.c pool/node_files.c pool/ksm.c \
             pool/catalog.c pool/memory.c pool/http.c pool/worker.c pool/worker_run.c \
             pool/orphans.c pool/egress.c pool/egress_http.c pool/egress_tls.c pool/egress_ctl.c \
             pool/node_egress.c pool/node_warm.c pool/relay_tls.c pool/thp.c pool/hostset.c pool/fpr.c

# The egress proxy terminates and re-encrypts TLS with libssl.
PKGS += libssl

BINS += $(BUILD)/warmpool-egress
$(BUILD)/warmpool-egress: $(BUILD)/obj/pool/egress_main.o $(BUILD)/libpool.a $(BUILD)/libagentlink.a $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/warmpool-node
$(BUILD)/warmpool-node: $(BUILD)/obj/pool/node_main.o $(BUILD)/libpool.a $(BUILD)/libagentlink.a $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/pool_bench
$(BUILD)/bench/pool_bench: $(BUILD)/obj/bench/pool_bench.o $(BUILD)/libpool.a $(BUILD)/libagentlink.a $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/relay_bench
$(BUILD)/bench/relay_bench: $(BUILD)/obj/bench/relay_bench.o $(BUILD)/libpool.a $(BUILD)/libagentlink.a $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/warmpool
$(BUILD)/warmpool: $(BUILD)/obj/pool/cli.o $(BUILD)/obj/pool/cli_quota.o $(BUILD)/obj/pool/doctor.o $(BUILD)/obj/pool/autoscale.o $(BUILD)/obj/pool/thp.o $(BUILD)/obj/pool/hostset.o $(BUILD)/obj/pool/fpr.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@
