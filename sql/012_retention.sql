-- Retention (--retain-days): pruning finds what ended long ago by when it ended, oldest first, a
-- small batch at a time, through these indexes instead of scanning the tables.
create index tickets_finished on tickets (finished_at) where finished_at is not null;
create index registration_log_logouts on registration_log (at) where event = 'logout';
create index registration_log_refusals on registration_log (at) where event in ('rejected', 'shutdown');
