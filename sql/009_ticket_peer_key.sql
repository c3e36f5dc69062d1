-- tickets.peer_id loses its foreign key to peers. The check it made ran once per row on every write
-- of a ticket: when it is submitted (a lookup and a key-share lock of the peer's row per ticket,
-- 30-40% of a submission's time in EXPLAIN ANALYZE) and again on each of its two updates (queued for
-- the unchanged key). What it guarded holds without it: a submission inserts its tickets only if
-- the peer's row exists (in the same statement), a login writes the peer's row before any of its
-- tickets, and peers are never deleted.
alter table tickets drop constraint tickets_peer_id_fkey;
