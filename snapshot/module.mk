snapshot_SRCS := snapshot/template.c snapshot/cgroup.c snapshot/sandbox.c snapshot/boot.c \
                 snapshot/checkpoint.c snapshot/restore.c snapshot/rootfs.c \
                 snapshot/net.c snapshot/criu.c snapshot/confine.c snapshot/userns.c

BINS += $(BUILD)/warmpool-snap
$(BUILD)/warmpool-snap: $(BUILD)/obj/snapshot/cli.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/snap_bench
$(BUILD)/bench/snap_bench: $(BUILD)/obj/bench/snap_bench.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/userns_bench
$(BUILD)/bench/userns_bench: $(BUILD)/obj/bench/userns_bench.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/criu_bench
$(BUILD)/bench/criu_bench: $(BUILD)/obj/bench/criu_bench.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

BINS += $(BUILD)/bench/clonecpu_bench
$(BUILD)/bench/clonecpu_bench: $(BUILD)/obj/bench/clonecpu_bench.o $(BUILD)/libpool.a $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@
