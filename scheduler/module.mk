# scheduler/: the HTTP API (Managed Agents-compatible) and the session event log.
scheduler_SRCS := scheduler/http_parse.c scheduler/server.c scheduler/route.c \
                  scheduler/util.c scheduler/resources.c \
                  scheduler/agents.c scheduler/envs.c scheduler/sessions.c \
                  scheduler/resources_session.c scheduler/multipart.c scheduler/files.c scheduler/files_s3.c scheduler/fileio.c \
                  scheduler/events.c scheduler/sse.c scheduler/vaults.c scheduler/work.c \
                  scheduler/config.c scheduler/sandboxes.c \
                  scheduler/model.c scheduler/mcp_rpc.c scheduler/mcp.c \
                  scheduler/metrics.c scheduler/metrics_pool.c scheduler/dashboard.c scheduler/tls.c \
                  scheduler/brain.c scheduler/brain_log.c scheduler/brain_tools.c scheduler/brain_files.c scheduler/brain_mcp.c \
                  scheduler/brain_egress.c scheduler/repos.c \
                  scheduler/envtpl.c scheduler/vault_key.c scheduler/quota.c scheduler/mcp_creds.c \
                  scheduler/migrate.c

# /dashboard's page: scheduler/dashboard.html as C string literals.
$(BUILD)/gen/dashboard_html.h: scheduler/dashboard.html
	@mkdir -p $(@D)
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $< > $@
$(BUILD)/obj/scheduler/dashboard.o: $(BUILD)/gen/dashboard_html.h
$(BUILD)/obj/scheduler/dashboard.o: PKG_CFLAGS += -I$(BUILD)/gen

# The scheduler hashes API keys and encrypts vault secrets with libcrypto.
PKGS += libcrypto libssl

# llhttp: prefer a system libllhttp (Debian 13+), else compile the generated C
# shipped by Debian 12's node-llhttp, with relaxed warnings and no -Werror
# (our own flags never weaken for it; style.md section 8).
ifeq ($(shell pkg-config --exists libllhttp 2>/dev/null && echo y),y)
LLHTTP_CFLAGS := $(shell pkg-config --cflags libllhttp)
LLHTTP_LIBS := $(shell pkg-config --libs libllhttp)
LLHTTP_A :=
else
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_CFLAGS := -I/usr/share/include/llhttp
LLHTTP_A := $(BUILD)/third_party/libllhttp.a
LLHTTP_LIBS := $(LLHTTP_A)
LLHTTP_OBJS := $(BUILD)/third_party/llhttp.o $(BUILD)/third_party/api.o \
               $(BUILD)/third_party/http.o
$(BUILD)/third_party/%.o: $(LLHTTP_DIR)/%.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) -std=c11 -O2 -g -w -fPIC $(filter -fsanitize=% -fno-sanitize-recover=% -fno-omit-frame-pointer,$(ALL_CFLAGS)) -I/usr/share/include/llhttp -c $< -o $@
$(LLHTTP_A): $(LLHTTP_OBJS)
	@rm -f $@
	ar rcs $@ $^
endif
PKG_CFLAGS += $(LLHTTP_CFLAGS)
# Every binary linking libscheduler.a needs llhttp; order after the module libs.
LDLIBS += $(LLHTTP_LIBS)
$(BUILD)/libscheduler.a: | $(LLHTTP_A)
# `make fuzz` links every target with $(LDLIBS), which names the archive.
fuzz: $(LLHTTP_A)

BINS += $(BUILD)/warmpool-scheduler
SCHED_LIBS := $(BUILD)/libscheduler.a $(BUILD)/libpool.a $(BUILD)/libagentlink.a \
              $(BUILD)/libsnapshot.a $(BUILD)/libbase.a
$(BUILD)/warmpool-scheduler: $(BUILD)/obj/scheduler/main.o $(SCHED_LIBS) $(LLHTTP_A)
	$(CC) $(ALL_CFLAGS) $(BUILD)/obj/scheduler/main.o $(SCHED_LIBS) $(LDFLAGS) $(LDLIBS) -o $@

# The TTFT benchmark's load generator (bench/bench_ttft.sh): libcurl multi
# on libev, speaking to the scheduler and the model server over HTTP only.
BINS += $(BUILD)/bench/ttft_bench
$(BUILD)/bench/ttft_bench: $(BUILD)/obj/bench/ttft_bench.o $(BUILD)/libbase.a | $(LLHTTP_A)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $^ $(LDFLAGS) $(LDLIBS) -o $@
