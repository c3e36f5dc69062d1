-- Runs: one command sent to many peers at once (`picus run`), one ticket per peer. A run records
-- what was asked (its target) and its rollout: at most max_concurrency of its tickets open at a
-- time (the rest wait `pending`), no more sent once more than max_errors failed, and none sent
-- after deliver_by (those end undeliverable). closed_at is set once none of its tickets is open.
create sequence run_seq start with 1000;

create table runs (
  run_id           text primary key default 'r' || nextval('run_seq')::text,
  created_at       timestamptz not null default now(),
  created_by       text not null,
  name             text not null,
  command          text not null,
  timeout_ms       integer not null check (timeout_ms > 0),
  target           jsonb not null,
  max_concurrency  integer check (max_concurrency > 0),
  max_errors       integer check (max_errors >= 0),
  deliver_by       timestamptz not null,
  closed_at        timestamptz,
  close_reason     text
);
create index runs_open on runs (created_at) where closed_at is null;
create index runs_created on runs (created_at);

-- A ticket of a run names it; tickets of no run (the catalog's, a plain submission) leave it null
-- and no index entry.
alter table tickets add column run_id text;
create index tickets_open_run on tickets (run_id) where finished_at is null and run_id is not null;
create index tickets_run on tickets (run_id) where run_id is not null;

-- `pending`: a run's ticket held back by its rollout. It is open (no finished_at) but never sent:
-- the sessions read only `queued` ones.
alter table tickets drop constraint tickets_state_check;
alter table tickets add constraint tickets_state_check check (state in
  ('pending', 'queued', 'delivered', 'succeeded', 'failed', 'timed_out', 'undeliverable', 'cancelled'));
alter table tickets drop constraint tickets_open_unfinished;
alter table tickets add constraint tickets_open_unfinished
  check ((finished_at is null) = (state in ('pending', 'queued', 'delivered')));

-- What a peer says of itself at registration (`--label role=web`), to target runs by.
alter table peers add column labels jsonb not null default '{}';
