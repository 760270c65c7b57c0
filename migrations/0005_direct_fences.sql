-- The fence of each option's direct lease (api/purchasing/direct-fences.ts): the
-- token of the last lease under which a request was queued. The API holding that
-- lease applies a purchase on it only while its token is not here, so a request
-- applied directly never passes one that queued before it.
create table direct_fences (
  ticket_option_id uuid primary key references ticket_options (id) on delete cascade,
  token            text not null
);
