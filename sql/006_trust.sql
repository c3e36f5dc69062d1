-- The cluster key (held by the server instances only, never by PostgreSQL or Redis) signs what
-- servers tell peers, and session tokens derive from it. The session key kept here in the clear
-- until now would let anyone who reads the database speak for every peer: it goes.
drop table cluster_keys;

-- A peer id is bound to the identity key of its first signed registration; from then on only a
-- registration signed by that key may open a session for it. last_register_ts is the peer's own
-- time of the last signed registration admitted (a replay is not newer), last_admitted_at the
-- server's time of the last registration admitted at all (registrations of one id are rate-limited).
alter table peers
  add column identity_key text,
  add column last_register_ts bigint,
  add column last_admitted_at bigint;

-- A session opened with a sealed acceptance: its peer's messages carry a MAC, which whoever takes
-- the session over checks too.
alter table sessions add column sealed boolean not null default false;
