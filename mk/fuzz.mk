# Fuzzing with clang's libFuzzer (ASan + UBSan), included at the end of the
# Makefile. The targets are tests/fuzz/fuzz-NAME.c; the project sources they
# need are compiled again with clang into build-fuzz/ (build/ is gcc's).
#
#   make fuzz-build      build every target into build-fuzz/
#   make fuzz-smoke      FUZZ_SECONDS (20) per target on a throwaway copy of
#                        its seed corpus, after replaying tests/fuzz/regressions/
#   make fuzz            FUZZ_SECONDS (300) per target, keeping what it finds in
#                        build-fuzz/corpus-NAME (never in tests/fuzz/corpus/)
#
# FUZZ_TARGETS=jwt,url limits a run to some targets; FUZZ_JOBS (default: the
# number of CPUs) how many run at once. A crash input lands in
# build-fuzz/artifacts/NAME/; copy it to tests/fuzz/regressions/NAME/ with the fix.

FUZZ_CC ?= clang
FUZZ_OUT := build-fuzz
FUZZ_NAMES := token-response jwt conf jsonptr template url callback-query api-route text-escape link http-forward
FUZZ_PKGS := $(or $(PKGS),libmicrohttpd libcurl sqlite3 jansson libsystemd libcrypto)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS ?= -O1 -g
FUZZ_PKG_CFLAGS = $(eval FUZZ_PKG_CFLAGS := $$(shell pkg-config --cflags $$(FUZZ_PKGS) 2>/dev/null))$(FUZZ_PKG_CFLAGS)
FUZZ_PKG_LIBS = $(eval FUZZ_PKG_LIBS := $$(shell pkg-config --libs $$(FUZZ_PKGS) 2>/dev/null))$(FUZZ_PKG_LIBS)
FUZZ_ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -I. -MMD -MP -Wall -Wextra -Wno-missing-field-initializers \
	$(FUZZ_PKG_CFLAGS) $(FUZZ_SAN) $(FUZZ_CFLAGS)
FUZZ_LIBS = $(FUZZ_PKG_LIBS) -lm

# The library sources (all but main), in an archive: each target pulls in
# only the objects it uses (today common/ and daemon/{oauth,http}.c).
FUZZ_LIB_SRC := $(or $(strip $(COMMON_SRC) $(DAEMON_SRC)),$(sort $(wildcard common/*.c)) daemon/http.c daemon/oauth.c)
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(FUZZ_LIB_SRC))
FUZZ_BIN := $(patsubst %,$(FUZZ_OUT)/fuzz-%,$(FUZZ_NAMES))

fuzz-build: $(FUZZ_BIN)

$(FUZZ_OUT)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_ALL_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_OUT)/libtokenbroker-fuzz.a: $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_OUT)/obj/tests/fuzz/%.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_ALL_CFLAGS) -fsanitize=fuzzer -c $< -o $@

$(FUZZ_OUT)/fuzz-%: $(FUZZ_OUT)/obj/tests/fuzz/fuzz-%.o $(FUZZ_OUT)/libtokenbroker-fuzz.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LIBS)

fuzz-smoke: fuzz-build
	@FUZZ_OUT=$(FUZZ_OUT) FUZZ_SECONDS=$(or $(FUZZ_SECONDS),20) FUZZ_TARGETS="$(or $(FUZZ_TARGETS),$(FUZZ_NAMES))" \
		FUZZ_JOBS=$(FUZZ_JOBS) bash tests/fuzz/run.sh smoke

fuzz: fuzz-build
	@FUZZ_OUT=$(FUZZ_OUT) FUZZ_SECONDS=$(or $(FUZZ_SECONDS),300) FUZZ_TARGETS="$(or $(FUZZ_TARGETS),$(FUZZ_NAMES))" \
		FUZZ_JOBS=$(FUZZ_JOBS) bash tests/fuzz/run.sh long

.PHONY: fuzz fuzz-build fuzz-smoke
.PRECIOUS: $(FUZZ_OUT)/obj/tests/fuzz/%.o

-include $(shell find $(FUZZ_OUT) -name '*.d' 2>/dev/null)
