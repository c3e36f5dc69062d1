-- A flood of refused registrations is counted, not stored one by one: beyond a rate, one
-- `rejected` row stands for `repeats` refusals with the same reason (its peer_id is then null: the
-- ids of a flood are whatever its sender made up).
alter table registration_log add column repeats integer not null default 1 check (repeats >= 1);
