-- Operator tokens: who may read (and, with scope admin, act) through the HTTP API. Kept apart from
-- enrollment tokens (a peer's token never opens the API, nor the other way round) and, like them,
-- stored as a SHA-256 hash with a short prefix for listings; the secret is shown once.
create table operator_tokens (
  token_id      bigint generated always as identity primary key,
  name          text not null check (length(name) between 1 and 128),
  scope         text not null check (scope in ('read', 'admin')),
  prefix        text not null,
  token_hash    bytea not null unique,
  created_at    timestamptz not null default now(),
  revoked_at    timestamptz,
  -- Touched at most once a minute, so reading the API is not a write per request.
  last_used_at  timestamptz
);
