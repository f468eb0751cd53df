-- 55_preview.sql: what "Update all synchronized users" would change, without changing it.
--
-- usersync.preview_resync(examples) counts the pairs whose target differs from the image of its
-- source under the current mapping, and shows a few field changes. It reads only (built with
-- EXECUTE: an admin-time query, planned once per call).

create or replace function usersync.preview_resync(examples integer default 5)
returns table (pairs bigint, would_change bigint, stale bigint, changes jsonb)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    c_diff text;   -- per contact field: (field, current, new) when they differ (user-sourced)
    u_diff text;   -- per mapped user field: (field, current, new) when they differ (reversed)
    q text;
begin
    if examples is null or examples < 0 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid number of examples %s', examples),
            hint = 'Pass 0 or more.';
    end if;
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';

    select string_agg(pg_catalog.format('(%L, c.%I::text, %s::text, c.%I is distinct from %s)',
                                        f.field, f.field, x.img, f.field, x.img), ', ' order by f.position)
      into c_diff
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.contact_field = f.field
     cross join lateral (select case when m.user_field is null then 'null'
                                     else pg_catalog.format('cast(u.%I as %s)', m.user_field, f.data_type) end) x(img)
     where f.module = 'contacts';
    select string_agg(pg_catalog.format(
               '(%L, u.%I::text, cast(c.%I as %s)::text, u.%I is distinct from cast(c.%I as %s))',
               m.user_field, m.user_field, m.contact_field, f.data_type, m.user_field, m.contact_field, f.data_type),
             ', ' order by f.position)
      into u_diff
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field;

    q := pg_catalog.format($q$
        with diffs as (
            select l.user_id, l.contact_id, l.mapping_version, d.field, d.cur, d.new, d.differs
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             cross join lateral (values %5$s) d(field, cur, new, differs)
             where l.active and l.source = 'user'
            union all
            select l.user_id, l.contact_id, l.mapping_version, d.field, d.cur, d.new, d.differs
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             cross join lateral (values %6$s) d(field, cur, new, differs)
             where l.active and l.source = 'contact'),
        changed as (select * from diffs where differs)
        select (select count(*) from usersync.links l where l.active),
               (select count(distinct user_id) from changed),
               (select count(*) from usersync.links l where l.active
                   and l.mapping_version < (select s.version from usersync.mapping_state s)),
               coalesce((select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                'user_id', x.user_id, 'contact_id', x.contact_id, 'field', x.field,
                                'from', x.cur, 'to', x.new) order by x.user_id, x.field)
                           from (select * from changed order by user_id, field limit %7$s) x), '[]')
        $q$, mu.relation, mu.key_column, mc.relation, mc.key_column, c_diff,
        coalesce(u_diff, '(null::text, null::text, null::text, false)'), examples);
    return query execute q;
end
$$;
comment on function usersync.preview_resync(integer) is
    'Dry run of resync_all: pairs, how many would change, how many are stale, and a few example field changes';
