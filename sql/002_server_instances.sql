-- The server instances sharing this database. Each instance refreshes its alive_at every few seconds
-- and sets stopped_at when it stops cleanly (after logging out its own sessions). When an instance
-- stops refreshing without having stopped cleanly (it crashed or lost the database), the others log
-- out its open sessions and cancel their open tickets. All times are the database clock (now()),
-- never a caller's, so instances with skewed clocks agree on who is lost.
create table server_instances (
  server_id   text primary key,
  started_at  timestamptz not null default now(),
  alive_at    timestamptz not null default now(),
  stopped_at  timestamptz
);
