# agentlink/: frame codec, host client, and the warmpool-hands program.
agentlink_SRCS := agentlink/frame.c agentlink/client.c agentlink/hands_server.c \
                  agentlink/hands_bash.c agentlink/hands_files.c agentlink/hands_search.c

BINS += $(BUILD)/warmpool-hands $(BUILD)/bench/alink_bench

# The hands run as PID 1 of a sandbox whose root has no libraries of ours:
# link statically. Sanitizer runtimes cannot be linked statically, so the
# SANITIZE build makes a dynamic hands (the tests then run it under ASan).
ifeq ($(SANITIZE),)
HANDS_STATIC := -static
endif
$(BUILD)/warmpool-hands: $(patsubst %.c,$(BUILD)/obj/%.o,agentlink/hands_main.c) \
		$(BUILD)/libagentlink.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $(HANDS_STATIC) $(LDFLAGS) $^ -ljansson -lev -lm -o $@

$(BUILD)/bench/alink_bench: $(patsubst %.c,$(BUILD)/obj/%.o,bench/alink_bench.c) \
		$(BUILD)/libagentlink.a $(BUILD)/libbase.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ -ljansson -lev -lm -o $@
