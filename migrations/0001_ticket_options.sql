-- Ticket options, purchases and tickets.
-- Invariant 1 of the design: for every option,
--   initial_allocation = allocation + sum(quantity of succeeded purchases) = allocation + count(tickets)
-- The view allocation_audit checks it in one query: `select * from allocation_audit where not balanced`.

create table ticket_options (
  id                 uuid primary key default gen_random_uuid(),
  name               text not null check (char_length(btrim(name)) between 1 and 200),
  "desc"             text not null default '' check (char_length("desc") <= 2000),
  -- what the option was created with; never changes
  initial_allocation integer not null check (initial_allocation >= 0),
  -- tickets still available
  allocation         integer not null check (allocation >= 0),
  created_at         timestamptz not null default now(),
  updated_at         timestamptz not null default now(),
  check (allocation <= initial_allocation)
);

create table purchases (
  id               uuid primary key,
  -- the order in which purchases were applied; per option it is the order the API enqueued them
  seq              bigint generated always as identity unique,
  ticket_option_id uuid not null references ticket_options (id),
  user_id          uuid not null,
  quantity         integer not null check (quantity > 0),
  status           text not null check (status in ('succeeded', 'rejected')),
  -- for a rejection: why, and how many tickets were left when it was decided
  reason           text,
  available        integer check (available >= 0),
  -- the HTTP request that asked for it, to follow one purchase through the logs
  request_id       text,
  enqueued_at      timestamptz,
  created_at       timestamptz not null default clock_timestamp(),
  check ((status = 'rejected') = (reason is not null))
);
create index purchases_option_seq_idx on purchases (ticket_option_id, seq);

create table tickets (
  id               bigint generated always as identity primary key,
  purchase_id      uuid not null references purchases (id),
  ticket_option_id uuid not null references ticket_options (id),
  created_at       timestamptz not null default now()
);
create index tickets_purchase_idx on tickets (purchase_id);
create index tickets_option_idx on tickets (ticket_option_id);

create view allocation_audit as
select o.id,
       o.initial_allocation,
       o.allocation,
       coalesce(p.sold, 0) as sold,
       coalesce(t.tickets, 0) as tickets,
       o.allocation >= 0
         and o.initial_allocation = o.allocation + coalesce(p.sold, 0)
         and o.initial_allocation = o.allocation + coalesce(t.tickets, 0) as balanced
  from ticket_options o
  left join (select ticket_option_id, sum(quantity) as sold from purchases where status = 'succeeded' group by 1) p
    on p.ticket_option_id = o.id
  left join (select ticket_option_id, count(*) as tickets from tickets group by 1) t
    on t.ticket_option_id = o.id;
