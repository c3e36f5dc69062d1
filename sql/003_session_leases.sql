-- Each open session is owned by one server instance at a time through a lease. The epoch is the
-- fencing token: it goes up whenever the session changes hands (taken over from a lost instance) or
-- is closed by another (replaced by a newer login of its peer). Every write the owner makes for the
-- session names the epoch it holds, and is refused once the epoch has moved on, so an instance that
-- was paused past its lease cannot write over its successor.
create table sessions (
  session_id   uuid primary key,
  peer_id      text not null references peers,
  os           text,
  distro       text,
  owner_id     text not null,
  epoch        integer not null default 1,
  lease_until  timestamptz not null,
  opened_at    timestamptz not null default now(),
  closed_at    timestamptz
);
create index sessions_open_peer on sessions (peer_id) where closed_at is null;
create index sessions_open_lease on sessions (lease_until) where closed_at is null;

-- Session tokens are never stored: each is an HMAC of its session id under the cluster's session key,
-- so whichever instance takes a session over can authenticate its peer and sign its jobs. The key
-- comes from PICUS_SESSION_KEY when set; otherwise the first instance stores a random one here.
create table cluster_keys (
  name        text primary key,
  key         bytea not null,
  created_at  timestamptz not null default now()
);

-- Tickets outlive the session that created them: a session that ends leaves its open tickets to
-- the peer's next session (or to the reconciler's deadlines). A ticket submitted while its peer is
-- offline has no session until the peer logs in.
alter table tickets alter column session_id drop not null;
create index tickets_queued_created on tickets (created_at) where state = 'queued';
create index tickets_delivered_at on tickets (delivered_at) where state = 'delivered';

-- Sessions opened before leases existed cannot be continued by anyone: close them.
insert into registration_log (event, peer_id, session_id, reason, server_id)
select 'logout', peer_id, session_id, 'server_lost', server_id from peer_sessions where logout_at is null;
