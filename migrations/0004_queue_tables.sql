-- What the PostgreSQL queue backend keeps next to BullMQ's own tables
-- (shared/queues/postgres-queue-backend.ts); on Redis these are keys instead
-- (shared/queues/queue-names.ts), and the tables stay empty.

-- The registry of option queues that have work, scored by last use (ms since epoch).
create table queue_active_options (
  ticket_option_id uuid primary key,
  last_used_at     bigint not null
);
create index queue_active_options_last_used on queue_active_options (last_used_at desc);

-- An option's line (API.md "Waiting in line"): the last number handed out at
-- enqueue, and the last one applied. Two tables, so that taking a number never
-- waits for the row a worker's transaction holds until it commits.
create table queue_line_taken (
  ticket_option_id uuid primary key,
  taken            bigint not null
);
create table queue_line_applied (
  ticket_option_id uuid primary key,
  applied          bigint not null
);
