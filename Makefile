# tokenbroker: tokenbrokerd (the daemon) and tokenctl (the admin CLI).
#
#   make                 build with -Wall -Wextra -Werror into build/
#   make sanitize        the same with ASan+UBSan into build-asan/
#   make deps            install the Debian packages needed to build and test
#   make run             build and run the daemon on conf/dev (no root needed)
#   make check           unit tests, integration tests, both builds (and the
#                        store matrix on PostgreSQL, build/ only)
#   make check-pg        the store matrix (tests/pg-matrix.txt) on PostgreSQL,
#                        both builds
#   make bench           token handout throughput against a bare MHD floor,
#                        then the proxy row (bench-proxy)
#   make bench-proxy     the auth-injecting proxy beside the same server direct
#   make bench-scale     a million connections: start, memory, storm, listing
#                        (BENCH_SCALE_CONNECTIONS=N for a smaller run)
#   make install         PREFIX=/usr/local DESTDIR= (binaries, units, man pages)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
DATADIR ?= $(PREFIX)/share
DESTDIR ?=

CC ?= gcc
BUILD ?= build
SAN ?= 0
PKGS := libmicrohttpd libcurl sqlite3 jansson libsystemd libcrypto libpq

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral -Wmissing-prototypes \
	-Wstrict-prototypes -Wno-missing-field-initializers
CFLAGS ?= -O2 -g
ifeq ($(SAN),1)
CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
# pkg-config is asked when a rule first needs it, not when make reads this
# file: `make deps check` on a fresh machine installs the packages first.
PKG_CFLAGS = $(eval PKG_CFLAGS := $$(shell pkg-config --cflags $$(PKGS) 2>/dev/null))$(PKG_CFLAGS)
PKG_LIBS = $(eval PKG_LIBS := $$(shell pkg-config --libs $$(PKGS) 2>/dev/null))$(PKG_LIBS)
ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -fstack-protector-strong -D_FORTIFY_SOURCE=2 $(WARN) \
	-DPRESETS_DIR='"$(DATADIR)/tokenbroker/providers.d"' -I. -MMD -MP $(PKG_CFLAGS) $(CFLAGS)
LIBS = $(PKG_LIBS) -lm

COMMON_SRC := common/log.c common/conf.c common/template.c common/util.c common/b64.c common/params.c \
	common/jsonptr.c common/jwt.c common/hashmap.c common/ordmap.c common/httpfwd.c common/intern.c \
	common/egress.c
DAEMON_SRC := daemon/connection.c daemon/store.c daemon/http.c daemon/oauth.c daemon/manager.c \
	daemon/refresher.c daemon/mhd.c daemon/api.c daemon/callback.c daemon/acl.c \
	daemon/timerwheel.c daemon/crypt.c daemon/route.c daemon/pg.c daemon/store-sqlite.c daemon/store-pg.c daemon/cluster.c daemon/follower.c \
	daemon/links.c daemon/links-db.c daemon/link-token.c daemon/heap.c daemon/store-wait.c daemon/pending.c \
	daemon/proxy.c daemon/proxy-path.c \
	daemon/redact.c daemon/steps.c daemon/preview.c daemon/trace.c \
	daemon/rtend.c daemon/loader.c
MIGRATIONS := $(sort $(wildcard sql/[0-9]*.sql))
PG_MIGRATIONS := $(sort $(wildcard sql/pg/[0-9]*.sql))

LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(COMMON_SRC) $(DAEMON_SRC)) $(BUILD)/sql.o $(BUILD)/sql-pg.o
UNIT_SRC := $(sort $(wildcard tests/unit/test-*.c))
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
# Tests that need a PostgreSQL server: run by tests/integration/store-pg.test.js
# against its throwaway cluster, not by run-unit.sh.
PG_TEST_BIN := $(patsubst tests/pg/%.c,$(BUILD)/pg-tests/%,$(sort $(wildcard tests/pg/test-*.c)))
UNIT_OBJ := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%.o,$(UNIT_SRC))
# Made only through pattern rules, the unit-test objects would be
# intermediates that make deletes at the end of every run ("rm
# build/tests/unit/*.o", then `make run` recompiles them all): keep them.
.SECONDARY: $(UNIT_OBJ) $(patsubst %,%.o,$(PG_TEST_BIN))

all: $(BUILD)/tokenbrokerd $(BUILD)/tokenctl $(UNIT_BIN) $(BUILD)/tools/notify-listen $(BUILD)/bench/seed \
	$(BUILD)/tools/realtime-shift.so $(PG_TEST_BIN)

$(BUILD)/tools/%: tests/tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $<

# LD_PRELOAD shims for tests: never sanitized (they load before the ASan
# runtime), so plain flags rather than $(CFLAGS).
$(BUILD)/tools/%.so: tests/tools/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -D_GNU_SOURCE $(WARN) -O2 -g -fPIC -shared -o $@ $< -ldl

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/sql.c: sql/embed.sh $(MIGRATIONS)
	@mkdir -p $(BUILD)
	sh sql/embed.sh $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/sql.o: $(BUILD)/sql.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/sql-pg.c: sql/embed.sh $(PG_MIGRATIONS)
	@mkdir -p $(BUILD)
	sh sql/embed.sh -n store_pg $(PG_MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/sql-pg.o: $(BUILD)/sql-pg.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libtokenbroker.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/tokenbrokerd: $(BUILD)/daemon/main.o $(BUILD)/libtokenbroker.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tokenctl: $(BUILD)/daemon/tokenctl.o $(BUILD)/daemon/tokenctl-integrations.o $(BUILD)/daemon/tokenctl-proxy.o \
		$(BUILD)/libtokenbroker.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libtokenbroker.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# calloc() made to fail, free() checking a wiped secret (its header comment)
$(BUILD)/tests/test-conn-parts: LDFLAGS += -Wl,--wrap=calloc,--wrap=free
# calloc() made to fail (its header comment)
$(BUILD)/tests/test-conn-refresh: LDFLAGS += -Wl,--wrap=calloc
$(BUILD)/tests/test-conn-names: LDFLAGS += -Wl,--wrap=malloc


$(BUILD)/pg-tests/%: $(BUILD)/pg-tests/%.o $(BUILD)/libtokenbroker.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lpthread

$(BUILD)/pg-tests/%.o: tests/pg/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -c $< -o $@

$(BUILD)/tests/unit/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -c $< -o $@

sanitize:
	$(MAKE) BUILD=build-asan SAN=1

# ---- tests ---------------------------------------------------------------

check-unit: all
	@bash tests/run-unit.sh $(BUILD)

check: all sanitize tests/node_modules/.package-lock.json
	@bash tests/run-all.sh

# The store matrix (issue 10): the integration files of tests/pg-matrix.txt
# (or PG_MATRIX="tests/integration/a.test.js ...") with every daemon on a
# throwaway PostgreSQL 15 (TB_STORE=postgresql), against both builds, then
# the leak scan. make check runs the same list on build/ only.
PG_MATRIX ?=
check-pg: all sanitize tests/node_modules/.package-lock.json
	@TB_PG_ONLY=1 TB_PG_MATRIX="$(PG_MATRIX)" bash tests/run-all.sh

tests/node_modules/.package-lock.json: tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund
	@touch $@

$(BUILD)/bench/floor: tests/bench/floor.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(shell pkg-config --libs libmicrohttpd)

$(BUILD)/bench/loadgen: tests/bench/loadgen.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

$(BUILD)/bench/relay: tests/bench/relay.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

# issue 9's scale benchmark: the seeder (through the store code) and a fast
# local token endpoint. Not installed.
$(BUILD)/bench/seed: $(BUILD)/tests/bench/seed.o $(BUILD)/libtokenbroker.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/bench/fastprovider: tests/bench/fastprovider.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(shell pkg-config --libs libmicrohttpd) -lpthread

bench: all $(BUILD)/bench/floor $(BUILD)/bench/loadgen $(BUILD)/bench/relay tests/node_modules/.package-lock.json
	TOKENBROKER_BUILD=$(CURDIR)/$(BUILD) node tests/bench/bench.js
	TOKENBROKER_BUILD=$(CURDIR)/$(BUILD) node tests/bench/proxy-bench.js

# issue 13's proxy row alone (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS)
bench-proxy: all $(BUILD)/bench/floor $(BUILD)/bench/loadgen $(BUILD)/bench/relay tests/node_modules/.package-lock.json
	TOKENBROKER_BUILD=$(CURDIR)/$(BUILD) node tests/bench/proxy-bench.js

# issue 9's table at a million connections (minutes; not part of check).
BENCH_SCALE_CONNECTIONS ?= 1000000
bench-scale: all $(BUILD)/bench/fastprovider $(BUILD)/bench/loadgen
	BENCH_SCALE_CONNECTIONS=$(BENCH_SCALE_CONNECTIONS) bash tests/bench/scale.sh $(BUILD)

# ---- running and installing ------------------------------------------------

deps:
	@bash tests/install-deps.sh

run: all
	@mkdir -p .run && chmod 0700 .run
	@test -s .run/local-client-secret || (umask 077; head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > .run/local-client-secret)
	$(BUILD)/tokenbrokerd -c conf/dev/tokenbroker.conf

# Units land in $(UNITDIR); sysusers.d and tmpfiles.d snippets in
# $(PREFIX)/lib (systemd reads /usr/local/lib and /usr/lib). The main
# config is installed only if absent; uninstall leaves /etc and
# /var/lib/tokenbroker alone.
UNITS := tokenbrokerd.service tokenbrokerd.socket tokenbrokerd-callback.socket
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d

MANDIR ?= $(DATADIR)/man
MAN1 := man/tokenctl.1
MAN8 := man/tokenbrokerd.8

install: $(BUILD)/tokenbrokerd $(BUILD)/tokenctl
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(SYSCONFDIR)/tokenbroker/providers.d $(DESTDIR)$(DATADIR)/tokenbroker/providers.d \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILD)/tokenbrokerd $(DESTDIR)$(SBINDIR)/tokenbrokerd
	install -m 0755 $(BUILD)/tokenctl $(DESTDIR)$(BINDIR)/tokenctl
	install -m 0644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(MAN8) $(DESTDIR)$(MANDIR)/man8/
	for u in $(UNITS); do \
		sed 's|@SBINDIR@|$(SBINDIR)|g' systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 systemd/tokenbroker.sysusers $(DESTDIR)$(SYSUSERSDIR)/tokenbroker.conf
	install -m 0644 systemd/tokenbroker.tmpfiles $(DESTDIR)$(TMPFILESDIR)/tokenbroker.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/tokenbroker/tokenbroker.conf || \
		install -m 0644 conf/tokenbroker.conf $(DESTDIR)$(SYSCONFDIR)/tokenbroker/tokenbroker.conf
	for f in conf/providers.d/*.conf; do [ -e "$$f" ] || continue; \
		install -m 0644 "$$f" $(DESTDIR)$(DATADIR)/tokenbroker/providers.d/ || exit 1; done

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/tokenbrokerd $(DESTDIR)$(BINDIR)/tokenctl \
		$(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) \
		$(DESTDIR)$(SYSUSERSDIR)/tokenbroker.conf $(DESTDIR)$(TMPFILESDIR)/tokenbroker.conf \
		$(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(MAN1))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(MAN8)))
	rm -rf $(DESTDIR)$(DATADIR)/tokenbroker

clean:
	rm -rf build build-asan build-fuzz

.PHONY: all sanitize check check-pg check-unit bench bench-proxy bench-scale deps run install uninstall clean
.DELETE_ON_ERROR:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# The local authorization server of the walk-through (npm oidc-provider).
oidc-dev: tests/node_modules/.package-lock.json
	@mkdir -p .run
	node tests/lib/oidc-server.js --port 9000 --secret-file .run/local-client-secret \
		--redirect-uri http://127.0.0.1:8421/oauth/callback/local \
		--redirect-uri http://127.0.0.1:8421/oauth/callback --access-token-ttl 60

.PHONY: oidc-dev
include mk/fuzz.mk
