#!/usr/bin/env bash
# Runs a command with Node >= 24 and pnpm 12.4.2 on PATH, bringing both from the npm registry
# into .tools/ (git-ignored) when the machine lacks them, and installing the workspace with the
# frozen lockfile when node_modules is missing or older than the lockfile.
# Usage: scripts/toolchain.sh <command> [args...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
node_version=24.22.3
pnpm_version=12.4.2

node_major() { node -v 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || true; }

if [ -x "$tools/node_modules/.bin/node" ]; then
  export PATH="$tools/node_modules/.bin:$PATH"
fi
major=$(node_major)
if [ -z "$major" ] || [ "$major" -lt 24 ] || [ "$(pnpm -v 2>/dev/null || true)" != "$pnpm_version" ]; then
  command -v npm >/dev/null || { echo "toolchain: npm is needed to bring Node $node_version" >&2; exit 1; }
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "toolchain: unsupported machine $(uname -m)" >&2; exit 1 ;;
  esac
  echo "toolchain: installing Node $node_version and pnpm $pnpm_version into .tools/" >&2
  mkdir -p "$tools"
  [ -f "$tools/package.json" ] || echo '{ "private": true }' >"$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --save-exact --loglevel=error \
    "node-linux-$arch@$node_version" "pnpm@$pnpm_version" >&2)
  export PATH="$tools/node_modules/.bin:$PATH"
fi

stamp="$root/node_modules/.picus-install-stamp"
if [ ! -f "$stamp" ] || [ "$root/pnpm-lock.yaml" -nt "$stamp" ]; then
  (cd "$root" && pnpm install --frozen-lockfile --reporter=append-only >&2)
  touch "$stamp"
fi

[ "${PICUS_KEEP_CWD:-}" = 1 ] || cd "$root"
exec "$@"
