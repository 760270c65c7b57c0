-- Idempotency keys of purchase requests (API.md, header `Idempotency-Key`).
-- One row per (option, user, key): the unique primary key is what makes 50
-- concurrent retries of one request buy once, whatever Redis does. The row
-- names the purchase id the first request enqueued; a retry with the same
-- body answers that purchase's outcome, one with a different body is a 422.
-- A row past `expires_at` counts as absent and is overwritten in place by the
-- next request with that key (shared/idempotency-keys.ts).

create table idempotency_keys (
  ticket_option_id uuid not null references ticket_options (id),
  user_id          uuid not null,
  key              text not null check (char_length(key) between 1 and 255),
  -- sha256 (hex) of the request body's meaning (quantity), to tell a retry from a reuse
  request_hash     text not null,
  -- the purchase (and BullMQ job) id the first request created; not a foreign key,
  -- because the purchase is recorded only when a worker applies it
  purchase_id      uuid not null unique,
  created_at       timestamptz not null default now(),
  expires_at       timestamptz not null,
  primary key (ticket_option_id, user_id, key)
);
-- For deleting expired keys in bulk.
create index idempotency_keys_expires_idx on idempotency_keys (expires_at);
