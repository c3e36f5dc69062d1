-- The Redis users the servers manage for peers (docs/security.md). Redis holds its users in memory
-- only: after a restart the servers create them again from here. Only SHA-256 hashes of their
-- passwords are kept (Redis takes the same hash: ACL SETUSER ... #<hex>).
--   enroll       {p}:enroll:{token_id}: an enrolling peer's, while its token is active; its password
--                is derived from the token, so the enrollment string needs only the token.
--   peer         {p}:peer:{peer_id}: one session's, with a fresh password; gone when it ends.
--   provisioned  {p}:peer:{peer_id}: a seed peer's (picus-server peer add), until its token is revoked.
create table redis_users (
  name           text primary key,
  kind           text not null check (kind in ('enroll', 'peer', 'provisioned')),
  peer_id        text,
  token_id       bigint references tokens on delete cascade,
  session_id     uuid,
  password_hash  text not null check (password_hash ~ '^[0-9a-f]{64}$'),
  created_at     timestamptz not null default now(),
  check (kind <> 'enroll' or (token_id is not null and peer_id is null and session_id is null)),
  check (kind <> 'peer' or (peer_id is not null and session_id is not null)),
  check (kind <> 'provisioned' or (peer_id is not null and token_id is not null and session_id is null))
);
create index redis_users_token on redis_users (token_id) where token_id is not null;
create index redis_users_session on redis_users (session_id) where session_id is not null;

-- A token made for one provisioned seed peer enrolls that peer id only.
alter table tokens add column peer_id text;

-- Which token opened a session (null: a PICUS_TOKENS one), so revoking the token ends it.
alter table sessions add column token_id bigint;
create index sessions_open_token on sessions (token_id) where closed_at is null and token_id is not null;
