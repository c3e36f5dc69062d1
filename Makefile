# The quick start. Both targets bring Node 24 and pnpm when the machine lacks them.
.PHONY: dev test bench

dev:
	@scripts/toolchain.sh pnpm run dev

test:
	@scripts/toolchain.sh pnpm test

bench:
	@scripts/toolchain.sh pnpm bench
