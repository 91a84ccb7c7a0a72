# loyalty: PGXS build.  The version lives in loyalty.control only.
EXTENSION   = loyalty
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(EXTENSION).control)

MODULE_big  = loyalty
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
PG_CPPFLAGS = -I$(srcdir)/src -DLOYALTY_VERSION='"$(EXTVERSION)"'
# -Wextra's unused-parameter fires inside PostgreSQL's own headers.  No
# -Werror here: a packager's build with another compiler must not fail on a
# new warning; scripts/ and CI add it (make COPT=-Werror).
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter

# The install script of the current version is assembled from one SQL file
# per concern, in name order.  Released versions' scripts are frozen as
# committed files (loyalty--1.0.sql, loyalty--1.1.sql), with the upgrade
# scripts between them.
SQL_PARTS   = $(sort $(wildcard src/sql/*.sql))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
DATA        = $(filter-out $(DATA_built),$(wildcard $(EXTENSION)--*.sql))

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=$(EXTENSION)

ISOLATION      = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=$(EXTENSION)

TAP_TESTS   = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN = $(DATA_built) results regression.diffs regression.out output_iso tmp_check log

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

ifneq ($(MAJORVERSION),15)
$(error loyalty is built and tested against PostgreSQL 15; this pg_config reports $(MAJORVERSION))
endif

# PGXS tracks no header dependencies: rebuild everything when a header changes.
$(OBJS): $(wildcard src/*.h)
# LOYALTY_VERSION comes from the control file: a new version rebuilds the
# library's version check.
src/loyalty.o: $(EXTENSION).control

$(DATA_built): $(SQL_PARTS) $(EXTENSION).control
	cat $(SQL_PARTS) > $@
