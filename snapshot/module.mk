snapshot_SRCS := snapshot/template.c snapshot/cgroup.c snapshot/sandbox.c snapshot/boot.c \
                 snapshot/checkpoint.c snapshot/restore.c snapshot/rootfs.c

BINS += $(BUILD)/warmpool-snap
$(BUILD)/warmpool-snap: $(BUILD)/obj/snapshot/cli.o $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@
