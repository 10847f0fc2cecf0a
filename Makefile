# warmpool - one Makefile, strict by default.
#
#   make            build every binary into build/
#   make deps       install what the project needs (deploy/install-deps.sh)
#   make test       deps + build + the whole suite (unit + integration)
#   make test-asan  the same under AddressSanitizer + UBSan (build/asan/)
#   make fuzz       libFuzzer targets (clang), each run for FUZZ_SECONDS
#   make bench      benchmarks, results under bench/results/
#   make bench-ttft the TTFT benchmark alone (FULL=1: every rate)
#   make run        the whole stack on this machine (see README)
#   make install    binaries, systemd units, /etc/warmpool (PREFIX, DESTDIR)
#   make deb        a Debian package of the tree (build/deb/warmpool_*.deb)

BUILD    ?= build
CC       ?= cc
WERROR   ?= 1
SANITIZE ?=
PREFIX   ?= /opt/warmpool
FUZZ_SECONDS ?= 30

WARN := -Wall -Wextra -Wstrict-prototypes -Wwrite-strings -Wformat=2 \
        -Wformat-security -Wshadow -Wno-missing-field-initializers
# snprintf into fixed buffers is how we bound paths and messages; gcc's
# guesses about possible truncation there are noise, not bugs.
WARN += -Wno-format-truncation
ifeq ($(WERROR),1)
WARN += -Werror
endif
CFLAGS ?= -O2 -g
# Generated sources (lua/lua2c.sh's output) are found through -I$(GEN).
GEN := $(BUILD)/gen
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(CFLAGS) $(WARN) -I. -I$(GEN) -MMD -MP \
              -DWP_PREFIX='"$(PREFIX)"'
# Symbols bound at start (and the GOT read-only after it): the node forks a
# helper per restore and per destroy, and each one binding the functions it
# calls first wrote (copied) the parent's GOT pages and searched symbol
# tables, in every child.
LDFLAGS += -Wl,-z,relro,-z,now
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Libraries. Evaluated lazily (=) so `make deps` can run first.
PKGS = libcurl hiredis jansson criu libcrypto libseccomp
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lev -lpthread -lm
TEST_LDLIBS = $(LDLIBS) -lcmocka

# Modules append to these in their module.mk:
#   <mod>_SRCS   sources of lib<mod>.a
#   BINS         binaries under $(BUILD)/
MODULES := scheduler pool snapshot agentlink base
BINS :=
.DEFAULT_GOAL := all
include $(wildcard $(addsuffix /module.mk,$(MODULES)))
include tests/modelserver/build.mk

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
MODLIBS := $(foreach m,$(MODULES),$(if $($(m)_SRCS),$(BUILD)/lib$(m).a))

define MODLIB_RULE
$(BUILD)/lib$(1).a: $(call obj,$($(1)_SRCS))
	@mkdir -p $$(@D)
	@rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(if $($(m)_SRCS),$(eval $(call MODLIB_RULE,$(m)))))

# A stamp holding the flags: objects rebuild when the flags change.
FLAGS_STAMP := $(BUILD)/.flags
FLAGS_NOW := $(CC) $(ALL_CFLAGS) $(LDFLAGS)
$(shell mkdir -p $(BUILD); [ "$$(cat $(FLAGS_STAMP) 2>/dev/null)" = "$(FLAGS_NOW)" ] || echo "$(FLAGS_NOW)" > $(FLAGS_STAMP))

# Lua scripts: the .lua files of lua/<module>/<file>/ become the C arrays of
# $(GEN)/lua/<module>/<file>.h, which <module>/<file>.c includes. Every object
# waits for them (order only: the .d files carry the real dependency).
LUA_DIRS := $(patsubst %/,%,$(sort $(dir $(wildcard lua/*/*/*.lua))))
LUA_HDRS := $(patsubst %,$(GEN)/%.h,$(LUA_DIRS))
define LUA_RULE
$(GEN)/$(1).h: $(wildcard $(1)/*.lua) $(wildcard lua/*/_*.lua) lua/lua2c.sh
	@mkdir -p $$(@D)
	lua/lua2c.sh $(1) > $$@.tmp && mv $$@.tmp $$@
endef
$(foreach d,$(LUA_DIRS),$(eval $(call LUA_RULE,$(d))))
lua: $(LUA_HDRS)

$(BUILD)/obj/%.o: %.c $(FLAGS_STAMP) | $(LUA_HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -c $< -o $@

# --- tests ---------------------------------------------------------------
# Every tests/unit/*.c and tests/integration/*.c is one cmocka binary; the
# helpers in tests/lib/ are linked into each.
TEST_SRCS := $(wildcard tests/unit/*.c tests/integration/*.c)
TEST_LIB_SRCS := $(wildcard tests/lib/*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))

$(BUILD)/tests/%: tests/%.c $(call obj,$(TEST_LIB_SRCS)) $(MODLIBS) $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -Itests $< $(call obj,$(TEST_LIB_SRCS)) $(MODLIBS) \
	    $(LDFLAGS) $(TEST_LDLIBS) -o $@

.PHONY: all lua deps test check test-asan fuzz fuzz-replay-bins bench bench-ttft run demo clean format format-check install deb
all: $(BINS) $(TEST_BINS) fuzz-replay-bins

deps:
	deploy/install-deps.sh --prefix $(PREFIX)

# `test` installs first, then re-enters make so pkg-config sees the libraries.
test: deps
	$(MAKE) check

check: all
	tests/run.sh $(BUILD)

# Sanitized binaries run 2-3x slower: test_pool's 18 real-node tests came
# within seconds of run.sh's 600 s per binary, and once past it.
test-asan: deps
	WP_TEST_TIMEOUT=$${WP_TEST_TIMEOUT:-1200} $(MAKE) BUILD=build/asan SANITIZE=address,undefined check

# --- fuzzing -------------------------------------------------------------
# tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput. `make fuzz`
# builds it with libFuzzer; the suite replays tests/fuzz/<name>/* through
# tests/fuzz/replay_main.c without libFuzzer.
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRCS))
FUZZ_LIB_SRCS := $(foreach m,$(MODULES),$($(m)_SRCS))
REPLAY_BINS := $(patsubst %,$(BUILD)/fuzz-replay/%,$(FUZZ_NAMES))

fuzz-replay-bins: $(REPLAY_BINS)
$(BUILD)/fuzz-replay/%: tests/fuzz/fuzz_%.c tests/fuzz/replay_main.c $(MODLIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) $^ $(LDFLAGS) $(LDLIBS) -o $@

fuzz: deps $(LUA_HDRS) $(GEN)/dashboard_html.h
	@mkdir -p build/fuzz
	@for n in $(FUZZ_NAMES); do \
	  echo "fuzz: building $$n"; \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -I. -I$(GEN) $(PKG_CFLAGS) -DWP_PREFIX='"$(PREFIX)"' \
	    -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_$$n.c $(FUZZ_LIB_SRCS) \
	    $(LDLIBS) -o build/fuzz/$$n || exit 1; \
	  mkdir -p build/fuzz/corpus-$$n; \
	  echo "fuzz: running $$n for $(FUZZ_SECONDS)s"; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    build/fuzz/corpus-$$n tests/fuzz/$$n || exit 1; \
	done

# --- benchmarks and the demo ----------------------------------------------
bench: deps
	$(MAKE) all
	bench/run.sh $(BUILD)

# TTFT: warmpool's sessions against a coupled cold-boot harness (FULL=1 for
# every rate up to 100 sessions/s; see bench/bench_ttft.sh for the knobs).
bench-ttft: deps
	$(MAKE) all
	bench/bench_ttft.sh $(BUILD)

# Ctrl-C is how it ends: "stopping", then status 0 (deploy/run-local.sh runs
# as the terminal's foreground job, so make itself never sees the SIGINT).
run: deps
	$(MAKE) all
	deploy/run-local.sh $(BUILD)

# The snapshot layer alone: boot, checkpoint, restore clones, timings.
demo: deps
	$(MAKE) all
	$(BUILD)/warmpool-snap demo

# --- install and package ---------------------------------------------------
# Binaries under PREFIX/bin (the private criu of deploy/install-deps.sh lives
# there too, and is what the binaries look for: WP_PREFIX), units under
# SYSTEMDDIR with PREFIX filled in, the config files under /etc/warmpool
# (every option commented; an existing file is kept unless DESTDIR is set,
# i.e. when packaging). The system user and `warmpool doctor` are the
# package's postinst (deploy/debian/), or deploy/postinstall.sh by hand.
SYSTEMDDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc
DESTDIR ?=
INSTALL_BINS := warmpool-scheduler warmpool-node warmpool warmpool-snap warmpool-hands warmpool-egress
install: $(addprefix $(BUILD)/,$(INSTALL_BINS))
	install -d -m 755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMDDIR) \
	    $(DESTDIR)$(PREFIX)/share/doc/warmpool $(DESTDIR)$(PREFIX)/share/warmpool
	install -d -m 750 $(DESTDIR)$(SYSCONFDIR)/warmpool
	for b in $(INSTALL_BINS); do install -m 755 $(BUILD)/$$b $(DESTDIR)$(PREFIX)/bin/$$b; done
	for u in warmpool-scheduler warmpool-node; do \
	    sed 's|@PREFIX@|$(PREFIX)|g' deploy/systemd/$$u.service > $(DESTDIR)$(SYSTEMDDIR)/$$u.service; \
	    chmod 644 $(DESTDIR)$(SYSTEMDDIR)/$$u.service; done
	for c in scheduler.conf node.conf; do \
	    if [ -n "$(DESTDIR)" ] || [ ! -e $(SYSCONFDIR)/warmpool/$$c ]; then \
	        install -m 640 deploy/etc/$$c $(DESTDIR)$(SYSCONFDIR)/warmpool/$$c; \
	    else echo "install: keeping $(SYSCONFDIR)/warmpool/$$c (new one: $(PREFIX)/share/warmpool/$$c)"; fi; \
	    install -m 644 deploy/etc/$$c $(DESTDIR)$(PREFIX)/share/warmpool/$$c; done
	install -m 644 README.md ARCHITECTURE.md $(DESTDIR)$(PREFIX)/share/doc/warmpool/
	cp -r deploy/prometheus deploy/grafana deploy/proxy $(DESTDIR)$(PREFIX)/share/warmpool/
	install -m 755 deploy/postinstall.sh $(DESTDIR)$(PREFIX)/share/warmpool/postinstall.sh
	install -m 755 deploy/relay-certs.sh $(DESTDIR)$(PREFIX)/share/warmpool/relay-certs.sh
	install -m 644 deploy/etc/redis-warmpool.conf $(DESTDIR)$(PREFIX)/share/warmpool/

deb: all
	deploy/debian/build-deb.sh $(BUILD)

clean:
	rm -rf build

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

-include $(shell find $(BUILD)/obj $(BUILD)/tests -name "*.d" 2>/dev/null)
