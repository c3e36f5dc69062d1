-- Cancelling a ticket its peer is running: the request is kept with the ticket (who and why, in
-- the words the ticket's close_reason gets once its peer reports the job killed), and a result may
-- now say `cancelled`.
alter table tickets add column cancel_requested_at timestamptz, add column cancel_reason text;
alter table job_results drop constraint job_results_status_check;
alter table job_results add constraint job_results_status_check
  check (status in ('succeeded', 'failed', 'timed_out', 'refused', 'cancelled'));
