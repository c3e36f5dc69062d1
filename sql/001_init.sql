-- The schema of record. PostgreSQL is the source of truth for peers, tokens, the job catalog,
-- tickets, results and the registration log; Redis only carries messages.

create table peers (
  peer_id        text primary key,
  os             text,
  distro         text,
  hostname       text,
  agent_version  text,
  first_seen_at  timestamptz not null default now(),
  last_seen_at   timestamptz not null default now()
);

-- Enrollment tokens, stored as SHA-256 of the secret (tokens are 256-bit random, so a fast hash
-- is enough). `prefix` is the first characters of the token, to tell tokens apart in listings.
create table tokens (
  token_id    bigint generated always as identity primary key,
  name        text not null,
  prefix      text not null,
  token_hash  bytea not null unique,
  created_at  timestamptz not null default now(),
  revoked_at  timestamptz
);

-- The job catalog: what a peer of a given os/distro is sent when it logs in.
create table jobs (
  job_id      text primary key,
  name        text not null,
  os          text not null,
  distro      text not null,
  command     text not null,
  timeout_ms  integer not null default 30000 check (timeout_ms > 0),
  enabled     boolean not null default true,
  updated_at  timestamptz not null default now()
);
create index jobs_os_distro on jobs (os, distro) where enabled;

-- One ticket per job sent to a peer. Ticket ids come from a sequence, so they are unique across
-- server instances. Every ticket ends in exactly one terminal state.
create sequence ticket_seq start with 100000;

create table tickets (
  ticket        text primary key default nextval('ticket_seq')::text,
  peer_id       text not null references peers,
  session_id    uuid not null,
  job_id        text references jobs on delete set null,
  job_name      text not null,
  os            text not null,
  distro        text not null,
  command       text not null,
  timeout_ms    integer not null,
  state         text not null default 'queued' check (state in
                  ('queued', 'delivered', 'succeeded', 'failed', 'timed_out', 'undeliverable', 'cancelled')),
  attempts      integer not null default 0,
  server_id     text not null,
  created_at    timestamptz not null default now(),
  delivered_at  timestamptz,
  finished_at   timestamptz
);
create index tickets_open on tickets (peer_id) where state in ('queued', 'delivered');
create index tickets_open_session on tickets (session_id) where state in ('queued', 'delivered');

-- Exactly one result per ticket: the primary key makes a repeated result a no-op.
create table job_results (
  ticket       text primary key references tickets,
  peer_id      text not null,
  session_id   uuid not null,
  status       text not null check (status in ('succeeded', 'failed', 'timed_out', 'refused')),
  exit_code    integer,
  output       text not null,
  truncated    boolean not null default false,
  started_at   timestamptz,
  finished_at  timestamptz,
  received_at  timestamptz not null default now(),
  server_id    text not null
);
create index job_results_peer on job_results (peer_id, received_at);

-- Every registration attempt, login, logout and server shutdown. Never holds a token.
--   login     an accepted registration; opens session_id
--   rejected  a refused registration, with its reason
--   logout    closes session_id, with its reason (peer_logout, timeout, server_shutdown, ...)
--   shutdown  a server instance stopping, with the operator's reason
create table registration_log (
  id          bigint generated always as identity primary key,
  at          timestamptz not null default now(),
  event       text not null check (event in ('login', 'rejected', 'logout', 'shutdown')),
  peer_id     text,
  session_id  uuid,
  reason      text,
  server_id   text not null,
  server_ip   text,
  check ((event in ('login', 'logout')) = (session_id is not null))
);
create unique index registration_log_one_login on registration_log (session_id) where event = 'login';
create unique index registration_log_one_logout on registration_log (session_id) where event = 'logout';
create index registration_log_peer on registration_log (peer_id, at);

-- One row per session: its login paired with its logout. While a session is open, logout_at is
-- null and duration is the time logged in so far.
create view peer_sessions as
select
  login.peer_id,
  login.session_id,
  login.at                                 as login_at,
  logout.at                                as logout_at,
  coalesce(logout.at, now()) - login.at    as duration,
  logout.reason                            as logout_reason,
  login.server_id,
  login.server_ip
from registration_log login
left join registration_log logout
  on logout.session_id = login.session_id and logout.event = 'logout'
where login.event = 'login';
