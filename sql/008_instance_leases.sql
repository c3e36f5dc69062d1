-- One lease per server instance instead of one per session. Renewing every session's lease row
-- every third of a lease cost a row update per session per round (about 400 a second for 2,000
-- idle peers, none of them HOT, each leaving a dead tuple): work that grew with the fleet. Now an
-- instance renews its own row, and holds every session it owns while that lease holds.
--
-- A session is held by its owner's current run: sessions.owner_id names the instance and
-- sessions.owner_run the run of it (server_instances.run, one more at each start) that opened or
-- took the session. It is lost, and may be taken over, once that instance's lease has run out or
-- the instance has started again since (a run that died cannot renew, and the new one does not
-- know its sessions). The epoch stays each session's fencing token: every write names it.

alter table server_instances
  add column run integer not null default 1,
  add column lease_until timestamptz;

-- An owner with open sessions and no row (none should exist: an instance says it is alive before
-- its first login) gets one, so its sessions are judged like any other's.
insert into server_instances (server_id)
select distinct owner_id from sessions where closed_at is null
on conflict (server_id) do nothing;

-- Open sessions stay valid: their owner's row carries the longest lease it held on any of them,
-- and the next renewal of the instance carries it on.
update server_instances i set lease_until = coalesce(
  (select max(s.lease_until) from sessions s where s.owner_id = i.server_id and s.closed_at is null),
  i.alive_at
);
alter table server_instances
  alter column lease_until set not null,
  alter column lease_until set default now();

-- Every existing row, open or closed, is of run 1 (the default of both columns).
alter table sessions add column owner_run integer not null default 1;
-- The per-session lease goes (and sessions_open_lease with it). Nothing updates a held session's
-- row any more: it changes when the session closes, or when it is taken over (owner, run, epoch).
alter table sessions drop column lease_until;
-- A takeover finds a lost instance's sessions, or an earlier run's, in this index: a range per
-- instance. The renewal's check of what the instance still holds reads it too.
create index sessions_open_owner on sessions (owner_id, owner_run) where closed_at is null;
-- No fillfactor for sessions: both updates a session row still gets change an indexed column (the
-- close changes closed_at, which every partial index's predicate names; a takeover owner_id and
-- owner_run), so neither could be HOT however much room its page had.

-- server_instances: the renewal changes alive_at and lease_until, which no index covers, so it is
-- a HOT update as long as its page has room; a tenth of each page is kept free for that.
alter table server_instances set (fillfactor = 90);

-- tickets: a ticket's row is updated when it is sent (state, delivered_at, attempts) and when it
-- ends (state, finished_at). Every index but the primary key was partial on `state` (and one was
-- on delivered_at), so both updates changed an indexed column and neither could be HOT. Open
-- tickets are now told by `finished_at is null` (set exactly when the state becomes terminal; the
-- check below holds it to that), so marking a ticket delivered changes no indexed column and is HOT
-- when its page has room; the update that ends it changes finished_at, leaves the open indexes and
-- adds only a primary key entry. The delivered-tickets sweep loses its delivered_at index: it reads
-- the open tickets older than its slack (by created_at) instead, a set bounded by what is in flight
-- and queued.
update tickets set finished_at = coalesce(delivered_at, created_at)
where state not in ('queued', 'delivered') and finished_at is null;
update tickets set finished_at = null where state in ('queued', 'delivered') and finished_at is not null;
alter table tickets add constraint tickets_open_unfinished
  check ((finished_at is null) = (state in ('queued', 'delivered')));

drop index tickets_open;
drop index tickets_open_session;
drop index tickets_queued_created;
drop index tickets_delivered_at;
create index tickets_open_peer on tickets (peer_id) where finished_at is null;
create index tickets_open_session on tickets (session_id) where finished_at is null;
create index tickets_open_created on tickets (created_at) where finished_at is null;

-- Room on each page for the delivery's new version of the row, so the HOT update stays on it: a
-- ticket is written and sent within moments, while its page is the one being filled.
alter table tickets set (fillfactor = 70);
