# tests/modelserver/build.mk - wp-modelserver, the local Messages API
# stand-in (test infrastructure; see tests/modelserver/README.md).
# Included from the top Makefile right after the modules, so `obj` and
# MODLIBS are not defined yet: paths are spelled out here.

# llhttp from Debian's node-llhttp: third-party generated C, compiled with
# its own relaxed flags (never -Werror). Guarded: the scheduler module
# defines the same rule and whichever comes first wins.
ifndef LLHTTP_OBJS
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
LLHTTP_OBJS := $(BUILD)/third_party/llhttp/llhttp.o $(BUILD)/third_party/llhttp/api.o \
               $(BUILD)/third_party/llhttp/http.o
$(BUILD)/third_party/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -O2 -g -w -I$(LLHTTP_INC) -c $< -o $@
endif
LLHTTP_INC ?= /usr/share/include/llhttp
LLHTTP_DIR ?= /usr/share/llhttp
PKG_CFLAGS += -I$(LLHTTP_INC)

MSRV_SRCS := tests/modelserver/msrv_http.c tests/modelserver/msrv_script.c \
             tests/modelserver/msrv_reply.c tests/modelserver/msrv_server.c \
             tests/modelserver/msrv_routes.c tests/modelserver/msrv_cache.c
MSRV_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(MSRV_SRCS))
MSRV_MAIN_OBJ := $(BUILD)/obj/tests/modelserver/msrv_main.o
MSRV_LIBS := $(MSRV_OBJS) $(LLHTTP_OBJS) $(BUILD)/libbase.a
MSRV_TESTLIB := $(BUILD)/obj/tests/lib/testlib.o

BINS += $(BUILD)/wp-modelserver
$(BUILD)/wp-modelserver: $(MSRV_MAIN_OBJ) $(MSRV_LIBS)
	$(CC) $^ $(LDFLAGS) $(LDLIBS) -o $@

# The unit test links the server's pieces (no sockets); the pattern rule
# for tests only links module libraries.
$(BUILD)/tests/unit/test_msrv: tests/unit/test_msrv.c $(MSRV_TESTLIB) $(MSRV_LIBS) $(BUILD)/.flags
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -Itests $< $(MSRV_TESTLIB) $(MSRV_LIBS) \
	    $(LDFLAGS) $(TEST_LDLIBS) -o $@

# Fuzz replay of the request parser wrapper, and the sources `make fuzz`
# compiles with libFuzzer: FUZZ_LIB_SRCS is assigned after this include,
# so the override keeps the module sources and adds the parser's.
$(BUILD)/fuzz-replay/msrv_req: tests/fuzz/fuzz_msrv_req.c tests/fuzz/replay_main.c \
    $(MSRV_LIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) $^ $(LDFLAGS) $(LDLIBS) -o $@
override FUZZ_LIB_SRCS = $(foreach m,$(MODULES),$($(m)_SRCS)) $(MSRV_SRCS) \
    $(filter-out $(foreach m,$(MODULES),$($(m)_SRCS)),$(addprefix $(LLHTTP_DIR)/,llhttp.c api.c http.c))
