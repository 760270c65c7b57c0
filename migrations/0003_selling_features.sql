-- Selling features (API.md, contract version 2): limits, holds, cancellations,
-- and purchases whose cost does not grow with their quantity.
--
-- The ledger of an option (invariant 1 of DESIGN.md):
--   initial_allocation = available + held + sold
-- where available is ticket_options.allocation, held the tickets of its
-- reservations in status 'held' (kept as a counter in ticket_options.held too,
-- so a batch never sums them), and sold the tickets of its succeeded purchases
-- that are not cancelled. allocation_audit checks it from the stored records:
-- `select * from allocation_audit where not balanced`.

alter table ticket_options
  -- null: no limit (an option created the old way reads exactly as before)
  add column max_per_purchase integer check (max_per_purchase >= 1),
  add column max_per_user     integer check (max_per_user >= 1),
  -- tickets of active holds; available + held + sold = initial_allocation
  add column held             integer not null default 0 check (held >= 0),
  add constraint ticket_options_within_initial check (allocation + held <= initial_allocation);

-- Per-ticket rows made one purchase of 3,000,000 tickets write 320 MB and hold its
-- option's queue for 36.7 s. A purchase's tickets are its quantity: nothing
-- else was ever read from these rows (no route shows ticket ids), so they go,
-- and every figure they gave is computed from purchases instead.
drop view allocation_audit;
drop table tickets;

alter table purchases
  -- set when the purchase is cancelled; its tickets are available again
  add column cancelled_at   timestamptz,
  -- the hold this purchase confirmed, if any
  add column reservation_id uuid,
  -- for a USER_LIMIT_REACHED rejection: the user's tickets (bought and held) when it was decided
  add column used           integer check (used >= 0),
  add constraint purchases_cancelled_succeeded check (cancelled_at is null or status = 'succeeded');
create index purchases_option_user_idx on purchases (ticket_option_id, user_id);

create table reservations (
  id               uuid primary key,
  -- the order in which holds were applied
  seq              bigint generated always as identity unique,
  ticket_option_id uuid not null references ticket_options (id),
  user_id          uuid not null,
  quantity         integer not null check (quantity > 0),
  status           text not null check (status in ('held', 'confirmed', 'released', 'expired', 'rejected')),
  -- for a rejection: why, what was left, and (USER_LIMIT_REACHED) what the user had
  reason           text,
  available        integer check (available >= 0),
  used             integer check (used >= 0),
  -- a hold not confirmed by then expires and its tickets are available again
  expires_at       timestamptz,
  -- the purchase a confirmation created
  purchase_id      uuid references purchases (id),
  request_id       text,
  enqueued_at      timestamptz,
  created_at       timestamptz not null default clock_timestamp(),
  -- when it stopped being held (confirmed, released or expired)
  decided_at       timestamptz,
  check ((status = 'rejected') = (reason is not null)),
  check ((status = 'confirmed') = (purchase_id is not null)),
  check (status = 'rejected' or expires_at is not null)
);
-- The expiry sweep looks only at active holds, oldest deadline first.
create index reservations_expiry_idx on reservations (expires_at) where status = 'held';
create index reservations_option_user_idx on reservations (ticket_option_id, user_id) where status = 'held';

create view allocation_audit as
select o.id,
       o.initial_allocation,
       o.allocation as available,
       coalesce(h.held, 0) as held,
       coalesce(p.sold, 0) as sold,
       coalesce(p.cancelled, 0) as cancelled,
       o.allocation >= 0
         and o.held = coalesce(h.held, 0)
         and o.initial_allocation = o.allocation + coalesce(h.held, 0) + coalesce(p.sold, 0) as balanced
  from ticket_options o
  left join (select ticket_option_id,
                    sum(quantity) filter (where cancelled_at is null) as sold,
                    sum(quantity) filter (where cancelled_at is not null) as cancelled
               from purchases where status = 'succeeded' group by 1) p
    on p.ticket_option_id = o.id
  left join (select ticket_option_id, sum(quantity) as held
               from reservations where status = 'held' group by 1) h
    on h.ticket_option_id = o.id;
