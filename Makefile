# The quick start: `make dev` runs the whole system, `make test` runs the tests. Every target
# brings Node 24 and pnpm when the machine lacks them (scripts/toolchain.sh).
.PHONY: dev test chaos sessions results

# A server and two peers in one process, on embedded PostgreSQL and an in-memory transport;
# with DATABASE_URL and REDIS_URL set, on those real services instead.
dev:
	@scripts/toolchain.sh pnpm run dev

test:
	@scripts/toolchain.sh pnpm test

# The fault scenarios at full scale with a ledger table; e.g. make chaos ARGS="--peers 5 --jobs 20"
chaos:
	@scripts/toolchain.sh pnpm chaos $(ARGS)

# What happened: peer sessions with their durations, and job results (of make dev's embedded
# database, or of DATABASE_URL when it is set).
EMBEDDED := $(if $(DATABASE_URL),,--embedded)
sessions:
	@./picus sessions $(EMBEDDED)

results:
	@./picus results $(EMBEDDED)
