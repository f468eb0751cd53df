-- 25_pairs.sql: attaching the engine to the application's tables, and detaching it.
--
-- usersync.attach(users, contacts, switch_column, shared_key, pair)  one verb, like supa_audit's
--     enable_tracking(regclass): checks both tables, records the pair, creates its links table,
--     generates its functions, puts its triggers and policy on the tables, maps same-named
--     fields, and synchronizes the users whose switch is already on, in one transaction.
-- usersync.attach_preview(...)  the same checks and what attach would create and link, writing nothing.
-- usersync.detach(pair)          removes the pair's triggers, policy, grants, generated code and
--     state; keeps both tables and every row.
--
-- attach and detach run as their caller (SECURITY INVOKER): creating triggers and policies on a
-- table is its owner's right, so the caller must own both tables (or be a superuser) and own the
-- usersync schema (the role that installed it). Nothing here ever alters a column or a row of an
-- application table: attach adds triggers, a policy and grants, and the rows sync creates.

-- Can a value of user field uf be assigned to contact field cf (or the reverse)? Asked of the
-- parser itself: EXPLAIN plans the INSERT without running it, and fails exactly when PostgreSQL
-- has no assignment cast (text -> date fails; date -> text works).
create or replace function usersync._assignable(p_from regclass, p_from_field text, p_to regclass, p_to_field text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    execute pg_catalog.format('explain (costs off) insert into %s (%I) select src.%I from %s src',
                              p_to, p_to_field, p_from_field, p_from);
    return true;
exception when datatype_mismatch or cannot_coerce then
    return false;
end
$$;

-- A table's candidate fields (not the key, the switch, generated or dropped columns).
create or replace function usersync._table_fields(p_rel regclass, p_key name, p_switch name)
returns table (field text, data_type text, label text, "position" smallint, not_null boolean, has_default boolean)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select a.attname::text,
           pg_catalog.format_type(a.atttypid, a.atttypmod),
           coalesce(pg_catalog.col_description(a.attrelid, a.attnum), a.attname::text),
           a.attnum,
           a.attnotnull,
           a.atthasdef or a.attidentity <> ''
      from pg_catalog.pg_attribute a
     where a.attrelid = p_rel and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
       and a.attname <> p_key and a.attname is distinct from p_switch
$$;

create or replace view usersync.metadata_fields as
select m.pair, m.module, f.field, f.data_type, f.label, f.position, f.not_null, f.has_default
  from usersync.modules m
 cross join lateral usersync._table_fields(m.relation, m.key_column, m.switch_column) f;
comment on view usersync.metadata_fields is 'The live catalog of the metadata fields of every pair''s tables';
comment on column usersync.metadata_fields.not_null is 'NOT NULL: unmapped, the field gets its default (or, without one, a sync fails)';

-- The key of a table: its primary key, else its only single-column unique NOT NULL key.
create or replace function usersync._table_key(p_rel regclass, p_role text)
returns name
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    k record;
    candidates name[];
begin
    select i.indnkeyatts, a.attname into k
      from pg_catalog.pg_index i
      left join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
     where i.indrelid = p_rel and i.indisprimary;
    if found and k.indnkeyatts = 1 and k.attname is not null then
        return k.attname;
    end if;
    if found then
        raise exception using errcode = 'US010',
            message = pg_catalog.format('cannot attach %s: its primary key has %s columns', p_rel, k.indnkeyatts),
            detail = pg_catalog.format('usersync pairs rows by a single-column key of the %s table.', p_role),
            hint = 'Add a single-column unique key (e.g. an identity column) and make it the primary key.';
    end if;
    candidates := array(select a.attname
                          from pg_catalog.pg_index i
                          join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                         where i.indrelid = p_rel and i.indisunique and i.indimmediate and i.indnkeyatts = 1
                           and i.indpred is null and i.indexprs is null and a.attnotnull
                         order by a.attnum);
    if pg_catalog.cardinality(candidates) = 1 then
        return candidates[1];
    end if;
    raise exception using errcode = 'US010',
        message = pg_catalog.format('cannot attach %s: it has %s', p_rel,
                                    case when pg_catalog.cardinality(candidates) = 0 then 'no key'
                                         else 'no primary key and several unique keys (' ||
                                              pg_catalog.array_to_string(candidates, ', ') || ')' end),
        detail = pg_catalog.format('usersync pairs rows by the primary key of the %s table, or by its only '
                                   'single-column unique NOT NULL key.', p_role),
        hint = pg_catalog.format('Give %s a primary key (ALTER TABLE ... ADD PRIMARY KEY).', p_rel);
end
$$;

-- The checks of attach, and the shape of the pair they allow. Raises US010 naming the table and
-- the column when a table cannot be attached; returns the keys and the pair's name.
create or replace function usersync._attach_check(p_users regclass, p_contacts regclass, p_switch name,
                                                  p_shared_key boolean, p_pair text)
returns table (pair text, user_key name, contact_key name)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    t record;
    uk name;
    ck name;
    name_ text;
    gen boolean;
begin
    if p_users is null or p_contacts is null or p_shared_key is null then
        raise exception using errcode = 'US010', message = 'attach needs a users table and a contacts table',
            hint = 'SELECT usersync.attach(''schema.users'', ''schema.contacts'')';
    end if;
    for t in select x.rel, x.role, c.relkind from (values (p_users, 'users'), (p_contacts, 'contacts')) x(rel, role)
               join pg_catalog.pg_class c on c.oid = x.rel loop
        if t.relkind = 'p' then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is a partitioned table', t.rel),
                detail = 'usersync attaches to plain tables; writes through a partitioned table''s partitions would '
                         'bypass the triggers of its parent.',
                hint = 'Attach a plain table.';
        elsif t.relkind <> 'r' then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is %s, not a table', t.rel,
                                            case t.relkind when 'v' then 'a view' when 'm' then 'a materialized view'
                                                           when 'f' then 'a foreign table' else 'not a table' end),
                hint = 'Attach the tables the application writes.';
        end if;
        if exists (select from pg_catalog.pg_inherits i where t.rel in (i.inhrelid, i.inhparent)) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is part of an inheritance tree', t.rel),
                detail = 'Writes through a parent or a child would bypass the triggers of the attached table.',
                hint = 'Attach a table that has no parent and no child.';
        end if;
        if exists (select from pg_catalog.pg_rewrite r where r.ev_class = t.rel and r.rulename <> '_RETURN') then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it has rules', t.rel),
                detail = 'A rule rewrites the engine''s own writes, which could then silently not happen.',
                hint = 'Replace the rules with triggers.';
        end if;
    end loop;
    if p_users = p_contacts then
        raise exception using errcode = 'US010', message = pg_catalog.format('cannot attach %s to itself', p_users),
            hint = 'A pair is a users table and a different contacts table.';
    end if;
    -- A table that is some pair's contacts table, or a new contacts table that is some pair's users.
    select a.pair, x.rel, case when x.rel = a.contacts then 'contacts' else 'users' end as role into t
      from usersync.attachments a, (values (p_users, 'users'), (p_contacts, 'contacts')) x(rel, wanted)
     where x.rel = a.contacts or (x.wanted = 'contacts' and x.rel = a.users)
     order by a.pair limit 1;
    if found then
        raise exception using errcode = 'US010',
            message = pg_catalog.format('cannot attach %s -> %s: %s is already the %s table of pair %L', p_users, p_contacts,
                                        t.rel, t.role, t.pair),
            detail = 'A contact row belongs to at most one user: a table is the contacts of one pair at most, and '
                     'never the users of one pair and the contacts of another.',
            hint = pg_catalog.format('Detach that pair first (SELECT usersync.detach(%L)), or attach other tables.', t.pair);
    end if;
    -- The engine's writes to a users table skip every pair's triggers: a users table feeding a
    -- reversed pair cannot feed another (usersync._set_sync_source refuses the converse).
    for t in select a.pair, a.id from usersync.attachments a where a.users = p_users loop
        execute pg_catalog.format('select exists (select from %s l where l.active and l.source = ''contact'')',
                                  usersync._links_table(t.id)) into gen;
        if gen then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s: pair %L of the same users table has reversed pairs',
                                            p_users, p_contacts, t.pair),
                detail = 'A contact that writes its user would leave the user''s contacts in the other pairs behind.',
                hint = pg_catalog.format('Restore their direction first (usersync.set_sync_source(..., ''user'', pair => %L)).', t.pair);
        end if;
    end loop;

    uk := usersync._table_key(p_users, 'users');
    ck := usersync._table_key(p_contacts, 'contacts');
    if p_switch is not null then
        if not exists (select from pg_catalog.pg_attribute a
                        where a.attrelid = p_users and a.attname = p_switch and a.attnum > 0 and not a.attisdropped) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it has no column %I for the switch', p_users, p_switch),
                hint = 'Name a boolean NOT NULL column of the users table, or none (every user is then synchronized).';
        end if;
        if p_switch = uk or not exists (select from pg_catalog.pg_attribute a
                                         where a.attrelid = p_users and a.attname = p_switch and a.attnotnull
                                           and a.attgenerated = ''
                                           and a.atttypid = 'pg_catalog.bool'::pg_catalog.regtype) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: the switch %I must be a boolean NOT NULL column', p_users, p_switch),
                detail = 'A NULL switch is neither on nor off.',
                hint = pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL (with a default such as false).',
                                         p_users, p_switch);
        end if;
    end if;
    if p_shared_key then
        if usersync._key_type(p_users, uk) <> usersync._key_type(p_contacts, ck)
           and not exists (select from pg_catalog.pg_cast k
                            where k.castsource = (select a.atttypid from pg_catalog.pg_attribute a
                                                   where a.attrelid = p_users and a.attname = uk)
                              and k.casttarget = (select a.atttypid from pg_catalog.pg_attribute a
                                                   where a.attrelid = p_contacts and a.attname = ck)
                              and k.castcontext in ('i', 'a')) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s with a shared key: %s.%I (%s) cannot fill %s.%I (%s)',
                                            p_users, p_contacts, p_users, uk, usersync._key_type(p_users, uk),
                                            p_contacts, ck, usersync._key_type(p_contacts, ck)),
                hint = 'A shared key needs keys of the same type.';
        end if;
    else
        select a.attidentity <> '' or a.atthasdef into gen
          from pg_catalog.pg_attribute a where a.attrelid = p_contacts and a.attname = ck;
        if not gen then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: its key %I is neither generated nor shared', p_contacts, ck),
                detail = 'usersync creates contacts, so it needs their key: an identity, a serial, a default such as '
                         'gen_random_uuid(), or the user''s own key.',
                hint = pg_catalog.format('Give %s.%I a default, or attach with shared_key => true (the contact''s key is '
                                         'then its user''s).', p_contacts, ck);
        end if;
    end if;
    name_ := coalesce(p_pair, (select c.relname from pg_catalog.pg_class c where c.oid = p_contacts));
    if name_ <> pg_catalog.btrim(name_) or name_ = '' then
        raise exception using errcode = 'US010', message = pg_catalog.format('invalid pair name %L', name_),
            hint = 'Name the pair with a non-empty name without leading or trailing spaces.';
    end if;
    if exists (select from usersync.attachments a where a.pair = name_) then
        raise exception using errcode = 'US010', message = pg_catalog.format('a pair named %L already exists', name_),
            hint = 'Name the new pair with pair => ''NAME''.';
    end if;
    return query select name_, uk, ck;
end
$$;

-- What the default mapping of two tables would be, before they are attached: every user field
-- with a same-named contact field it can fill (usersync.default_field_mapping, once attached).
create or replace function usersync._default_mapping_of(p_users regclass, p_user_key name, p_switch name,
                                                        p_contacts regclass, p_contact_key name)
returns table (user_field text, contact_field text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select u.field, c.field
      from usersync._table_fields(p_users, p_user_key, p_switch) u
      join usersync._table_fields(p_contacts, p_contact_key, null) c on c.field = u.field
     where usersync._assignable(p_users, u.field, p_contacts, c.field)
     order by u.position
$$;

-- What a DBA should know before attaching: foreign keys that decide deletes whatever the toggles
-- say, and contact fields that no sync can fill.
create or replace function usersync._attach_warnings(p_users regclass, p_user_key name, p_switch name,
                                                     p_contacts regclass, p_contact_key name)
returns setof text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format(
               case k.confdeltype
                    when 'c' then 'foreign key %1$s on %2$s: deleting a user deletes its contact (ON DELETE CASCADE), '
                                  'whatever delete_contact_with_user says'
                    when 'n' then 'foreign key %1$s on %2$s: deleting a user sets the reference in its contact to NULL '
                                  '(ON DELETE SET NULL); delete_contact_with_user then decides whether the contact stays'
                    when 'd' then 'foreign key %1$s on %2$s: deleting a user sets the reference in its contact to its '
                                  'default (ON DELETE SET DEFAULT); delete_contact_with_user then decides whether the contact stays'
                    else 'foreign key %1$s on %2$s (ON DELETE RESTRICT / NO ACTION): with delete_contact_with_user '
                         'off (the default) a user whose contact is synchronized cannot be deleted while the contact '
                         'exists; with it on, the contact is deleted first' end,
               pg_catalog.quote_ident(k.conname), p_contacts)
      from pg_catalog.pg_constraint k
     where k.conrelid = p_contacts and k.confrelid = p_users and k.contype = 'f'
    union all
    select pg_catalog.format('contact field %I of %s is NOT NULL, has no default and no user field fills it: every '
                             'synchronization will fail until a user field is mapped to it or it gets a default',
                             c.field, p_contacts)
      from usersync._table_fields(p_contacts, p_contact_key, null) c
     where c.not_null and not c.has_default
       and not exists (select from usersync._default_mapping_of(p_users, p_user_key, p_switch, p_contacts, p_contact_key) d
                        where d.contact_field = c.field)
$$;

-- The rows attach and its preview count: users it would synchronize, contacts a shared key links,
-- and of those, contacts with values in the given (unmapped) fields. Read as the caller of
-- attach (the engine has no privilege on tables not attached yet), so code of the tables' owner
-- that reading runs (an index predicate, a policy) runs as that caller: docs/install.md says to
-- attach a distrusted owner's tables only after reviewing their code.
create or replace function usersync._attach_counts(p_users regclass, p_contacts regclass, p_user_key name,
                                                   p_contact_key name, p_switch name, p_shared_key boolean,
                                                   p_unmapped text[],
                                                   out to_sync bigint, out to_link bigint, out would_empty bigint)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    sw text := coalesce('u.' || pg_catalog.quote_ident(p_switch), 'true');
    filled text := (select pg_catalog.string_agg(pg_catalog.format('c.%I is not null', f), ' or ')
                      from pg_catalog.unnest(p_unmapped) f);
begin
    execute pg_catalog.format('select count(*) from %s u where %s', p_users, sw) into to_sync;
    to_link := 0;
    would_empty := 0;
    if p_shared_key then
        execute pg_catalog.format('select count(*), count(*) filter (where %s) from %s u join %s c on c.%I = u.%I where %s',
                                  coalesce(filled, 'false'), p_users, p_contacts, p_contact_key, p_user_key, sw)
           into to_link, would_empty;
    end if;
end
$$;

create or replace function usersync.attach_preview(users regclass, contacts regclass, switch_column name default null,
                                                   shared_key boolean default false, pair text default null)
returns table (pair_name text, user_key name, contact_key name, users_to_sync bigint, contacts_to_create bigint,
               contacts_to_link bigint, mapping jsonb, warnings text[])
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    c record;
begin
    select * into c from usersync._attach_check(users, contacts, switch_column, shared_key, attach_preview.pair);
    select x.to_sync, x.to_link into users_to_sync, contacts_to_link
      from usersync._attach_counts(users, contacts, c.user_key, c.contact_key, switch_column, shared_key, '{}') x;
    contacts_to_create := users_to_sync - contacts_to_link;
    return query
    select c.pair, c.user_key, c.contact_key, users_to_sync, contacts_to_create, contacts_to_link,
           -- (an array of [user field, contact field], in the users table's column order)
           (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(d.user_field, d.contact_field)), '[]')
              from usersync._default_mapping_of(users, c.user_key, switch_column, contacts, c.contact_key) d),
           array(select w from usersync._attach_warnings(users, c.user_key, switch_column, contacts, c.contact_key) w);
end
$$;
comment on function usersync.attach_preview(regclass, regclass, name, boolean, text) is
    'What usersync.attach would do with these arguments (the checks, the users it would sync, the contacts it would create or link, the default mapping, warnings), writing nothing';

-- The views over every pair's links table: rebuilt when a pair comes or goes. Keys are shown as
-- text (of the default collation: pairs' keys differ in type and collation).
-- synchronized_contacts decides up_to_date per pair, where the keys still have their own type: a
-- link stamped with the current mapping version, or one that a resync run on the current
-- mapping went past (a finished run: mapping_state.covered_version; the run in progress: its
-- cursor, read back in the key's type by usersync._resync_cursor) and did not mark failed
-- (mapping_version 0). The view reads the engine's state with its owner's rights, so a role
-- granted SELECT on it needs nothing else (docs/sql-api.md).
create or replace function usersync._rebuild_views()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    links_body text;
    contacts_body text;
begin
    links_body := coalesce((select pg_catalog.string_agg(pg_catalog.format(
                          'select %L::pg_catalog.text as pair, l.user_id::pg_catalog.text collate pg_catalog."default" as user_id,'
                          ' l.contact_id::pg_catalog.text collate pg_catalog."default" as contact_id, l.source, l.active,'
                          ' l.mapping_version, l.synced_at'
                          ' from %s l', a.pair, usersync._links_table(a.id)), ' union all ' order by a.id)
                        from usersync.attachments a),
                     'select null::pg_catalog.text as pair, null::pg_catalog.text as user_id, null::pg_catalog.text as contact_id,'
                     ' null::pg_catalog.text as source, null::pg_catalog.bool as active, null::pg_catalog.int8 as mapping_version,'
                     ' null::pg_catalog.timestamptz as synced_at where false');
    execute 'create or replace view usersync.links as ' || links_body;
    contacts_body := coalesce((select pg_catalog.string_agg(pg_catalog.format(
                          'select %1$L::pg_catalog.text as pair,'
                          ' l.contact_id::pg_catalog.text collate pg_catalog."default" as contact_id,'
                          ' l.user_id::pg_catalog.text collate pg_catalog."default" as user_id, l.source, l.synced_at,'
                          ' l.mapping_version = s.version'
                          '  or l.mapping_version > 0'
                          '     and (s.covered_version = s.version'
                          '          or coalesce(l.user_id <= (select usersync._resync_cursor(r.after_user_id, %3$L, null::%3$s)'
                          '                                      from usersync.resync_state r'
                          '                                     where r.pair = %1$L and r.mapping_version = s.version), false))'
                          '  as up_to_date'
                          ' from %2$s l join usersync.mapping_state s on s.pair = %1$L'
                          ' where l.active',
                          a.pair, usersync._links_table(a.id),
                          (select pg_catalog.format_type(x.atttypid, x.atttypmod) from pg_catalog.pg_attribute x
                            where x.attrelid = a.users and x.attname = a.user_key)),
                          ' union all ' order by a.id)
                        from usersync.attachments a),
                     'select null::pg_catalog.text as pair, null::pg_catalog.text as contact_id, null::pg_catalog.text as user_id,'
                     ' null::pg_catalog.text as source, null::pg_catalog.timestamptz as synced_at,'
                     ' null::pg_catalog.bool as up_to_date where false');
    execute 'create or replace view usersync.synchronized_contacts as ' || contacts_body;
end
$$;

-- Is the engine's policy on this table as usersync._attach_grants makes it (permissive, every
-- command, the engine alone, every row)? The DDL guard refuses any other; the generator counts
-- the engine's writes where it is not (usersync._gen_writes_can_vanish).
create or replace function usersync._engine_policy_as_made(p_rel regclass)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from pg_catalog.pg_policy p
                    where p.polrelid = p_rel and p.polname = 'usersync_engine'
                      and p.polpermissive and p.polcmd = '*'
                      and p.polroles = array[(select r.oid from pg_catalog.pg_roles r
                                               where r.rolname = 'usersync_engine')]::pg_catalog.oid[]
                      and pg_catalog.pg_get_expr(p.polqual, p.polrelid) = 'true'
                      and pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = 'true')
$$;

-- What the engine needs on a pair's tables: the schema, the rows, the key's sequence, and a policy.
create or replace function usersync._attach_grants(p_pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    t record;
    seq text;
begin
    -- Both schemas first: each statement below runs the DDL guard, which reads both tables.
    for t in select distinct c.relnamespace::pg_catalog.regnamespace as nsp
               from pg_catalog.pg_class c where c.oid in (a.users, a.contacts) loop
        execute pg_catalog.format('grant usage on schema %s to usersync_engine', t.nsp);
    end loop;
    for t in select x.rel, x.key from (values (a.users, a.user_key), (a.contacts, a.contact_key)) x(rel, key) loop
        execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', t.rel);
        -- Row-level security, when the application enables it (Supabase does on its tables), must
        -- not hide rows from the engine: this permissive policy lets it see and write every row,
        -- and applies to no other role. (A restrictive policy can still hide rows: the engine
        -- then fails with US007 instead of skipping them; see usersync._lost_write.)
        if not exists (select from pg_catalog.pg_policy p where p.polrelid = t.rel and p.polname = 'usersync_engine') then
            execute pg_catalog.format('create policy usersync_engine on %s as permissive for all to usersync_engine'
                                      ' using (true) with check (true)', t.rel);
        end if;
        seq := pg_catalog.pg_get_serial_sequence(t.rel::text, t.key);
        if seq is not null then
            execute pg_catalog.format('grant usage on sequence %s to usersync_engine', seq);
        end if;
    end loop;
end
$$;

-- The CREATE TRIGGER statement of one of the engine's triggers (usersync._engine_triggers), and
-- whether an existing trigger is that one (pg_get_triggerdef writes the WHEN clause with its
-- casts and parentheses). usersync.doctor() asks too: a trigger altered to never fire is no
-- engine trigger.
create or replace function usersync._trigger_statement(p_name text, p_def text, p_rel regclass, p_fn text,
                                                       p_cond text default null)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format('create trigger %I ', p_name) || pg_catalog.format(p_def, p_rel)
           || ' when (current_user <> ''usersync_engine''' || coalesce(' and (' || p_cond || ')', '')
           || ') execute function ' || p_fn
$$;

create or replace function usersync._trigger_is(p_trigger oid, p_statement text)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.regexp_replace(lower(pg_catalog.pg_get_triggerdef(p_trigger)), '[()]|::name', '', 'g')
           = pg_catalog.regexp_replace(lower(p_statement), '[()]|::name', '', 'g')
$$;

-- A pair's engine triggers: each with the table it is on and the statement that creates it.
create or replace function usersync._pair_triggers(a usersync.attachments)
returns table (name text, rel regclass, fn text, statement text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select et.name, x.rel, et.fn, usersync._trigger_statement(et.name, et.def, x.rel, et.fn, et.cond)
      from usersync._engine_triggers(a.id) et
      join (values ('users', a.users), ('contacts', a.contacts)) x(module, rel) on x.module = et.module
$$;

-- The engine's triggers on a pair's tables. Existing triggers with the right definition are left
-- alone (the DDL guard refuses to drop them for anyone but a superuser).
create or replace function usersync._attach_triggers(p_pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    t record;
    existing oid;
begin
    for t in select * from usersync._pair_triggers(a) loop
        select tg.oid into existing from pg_catalog.pg_trigger tg where tg.tgrelid = t.rel and tg.tgname = t.name;
        if found and usersync._trigger_is(existing, t.statement) then
            continue;
        end if;
        if found then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.rel);
        end if;
        execute t.statement;
    end loop;
end
$$;

-- A key's column type for the links table: its type, qualified, and its collation (a text key's
-- comparisons then agree with the key's own).
create or replace function usersync._key_column(p_rel regclass, p_col name)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select usersync._key_type(p_rel, p_col)
           || coalesce(' collate ' || (select pg_catalog.format('%I.%I', ns.nspname, k.collname)
                                          from pg_catalog.pg_collation k join pg_catalog.pg_namespace ns on ns.oid = k.collnamespace
                                         where k.oid = x.attcollation and x.attcollation <> 0), '')
      from pg_catalog.pg_attribute x where x.attrelid = p_rel and x.attname = p_col
$$;

create or replace function usersync.attach(users regclass, contacts regclass, switch_column name default null,
                                           shared_key boolean default false, pair text default null)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    c record;
    a usersync.attachments;
    ukt text;
    ckt text;
    links text;
    w text;
    n bigint;
begin
    -- The lock first: a reversal checks for other pairs of its users table under it too.
    perform usersync._lock_config_exclusive();
    select * into c from usersync._attach_check(users, contacts, switch_column, shared_key, attach.pair);
    insert into usersync.attachments (pair, users, contacts, user_key, contact_key, switch_column, shared_key)
    values (c.pair, users, contacts, c.user_key, c.contact_key, switch_column, shared_key)
    returning * into a;
    insert into usersync.settings (pair) values (a.pair);
    insert into usersync.mapping_state (pair, mapping) values (a.pair, '{}');

    -- The pair's links, keyed in the keys' own types and collations.
    links := usersync._links_table(a.id);
    ukt := usersync._key_column(a.users, a.user_key);
    ckt := usersync._key_column(a.contacts, a.contact_key);
    execute pg_catalog.format(
        'create table %s ('
        ' user_id %s primary key,'
        ' contact_id %s not null unique,'
        ' source text not null default ''user'' check (source in (''user'', ''contact'')),'
        ' active boolean not null default true,'
        ' mapping_version bigint not null,'
        ' synced_at timestamptz not null default pg_catalog.now()'
        ') with (fillfactor = 70)', links, ukt, ckt);  -- room on each page: stamping a resynced pair is a HOT update
    -- Guards ask "is there any reversed pair at all?" before joining; this keeps that question O(1).
    execute pg_catalog.format('create index on %s (user_id) where active and source = ''contact''', links);
    execute pg_catalog.format('comment on table %s is %L', links,
                              pg_catalog.format('Links of pair %s (usersync.links shows every pair''s)', a.pair));
    execute pg_catalog.format('comment on column %s.synced_at is %L', links,
                              'Last full sync of the pair under the mapping version it records');
    execute pg_catalog.format('revoke all on %s from public', links);
    execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', links);
    execute pg_catalog.format('grant select on %s to usersync_admin', links);

    perform usersync._attach_grants(a.pair);
    perform usersync._generate(a.pair);
    perform usersync._attach_triggers(a.pair);
    perform usersync._rebuild_views();
    perform usersync.reset_field_mapping(a.pair);

    -- A shared key links the contacts that already have their user's key: their mapped fields
    -- then follow the user, and their unmapped fields are emptied (the article's rule). Refused
    -- where that would empty a value: attaching must not lose application data.
    if a.shared_key then
        select x.would_empty into n
          from usersync._attach_counts(a.users, a.contacts, a.user_key, a.contact_key, a.switch_column, true,
                                       array(select f.field from usersync._gen_contact_fields(a.pair) f
                                              where f.user_field is null)) x;
        begin
            if n > 0 then
                raise exception using errcode = 'US010',
                    message = pg_catalog.format('cannot attach %s -> %s: %s existing contact(s) have values in fields no '
                                                'user field is mapped to', a.users, a.contacts, n),
                    detail = 'Linking them would empty those fields (unmapped contact fields stay empty).',
                    hint = pg_catalog.format('Attach, then map those fields (usersync.field_mapping, pair %L), in one '
                                             'transaction; or give them defaults and NOT NULL.', a.pair);
            end if;
        end;
    end if;
    -- A contact field no sync can fill would make the first sync below fail, with a hint about a
    -- pair that the failure rolls back: refused here, with what to do instead.
    select f.field into w
      from usersync._gen_contact_fields(a.pair) f
      join usersync.metadata_fields m on m.pair = a.pair and m.module = 'contacts' and m.field = f.field
     where f.user_field is null and m.not_null and not m.has_default
     order by m.position limit 1;
    if found then
        select x.to_sync into n
          from usersync._attach_counts(a.users, a.contacts, a.user_key, a.contact_key, a.switch_column, false, '{}') x;
        if n > 0 then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s: contact field %I is NOT NULL, has no default and '
                                            'no user field of the same name fills it, and %s user(s) would be '
                                            'synchronized now', a.users, a.contacts, w, n),
                hint = pg_catalog.format('Give %s.%I a default (ALTER TABLE ... ALTER COLUMN %I SET DEFAULT ...), or '
                                         'a same-named user field; or attach while no user is synchronized and map a '
                                         'user field to it first.', a.contacts, w, w);
        end if;
    end if;
    for w in select x from usersync._attach_warnings(a.users, a.user_key, a.switch_column, a.contacts, a.contact_key) x loop
        raise warning 'usersync: %', w;
    end loop;
    -- Users whose switch is already on get their contact now.
    perform usersync._sync_users(a.pair, null);
    return a.pair;
end
$$;
comment on function usersync.attach(regclass, regclass, name, boolean, text) is
    'Attaches usersync to a users table and a contacts table; returns the pair''s name. See usersync.attach_preview for a dry run.';

create or replace function usersync.detach(pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp set standard_conforming_strings = on  -- (its literals hold backslashes)
as $$
declare
    a usersync.attachments;
    t record;
    seq text;
    triggers text[];
    drop_trigger text;
begin
    if detach.pair is null then
        raise exception using errcode = 'US011', message = 'detach needs the name of a pair',
            hint = 'SELECT pair FROM usersync.pairs';
    end if;
    a := usersync._pair(detach.pair);
    perform usersync._lock_config_exclusive();
    -- The pair's tables before any row: dropping their triggers waits for the application's open
    -- transactions, whose triggers still run and may delete a row the catalog's cascade below
    -- deletes (a failure in sync_errors that a user's fix ends): a cycle, 40P01.
    -- (users, then contacts; a table dropped while the DDL guard was off is left out)
    for t in select x.rel from (values (1, a.users), (2, a.contacts)) x(n, rel)
               join pg_catalog.pg_class c on c.oid = x.rel order by x.n loop
        execute pg_catalog.format('lock table %s in access exclusive mode', t.rel);
    end loop;
    -- The pair's triggers, recognised by the functions they call (whatever their names).
    triggers := array(select pg_catalog.format('drop trigger %I on %s', tg.tgname, tg.tgrelid::pg_catalog.regclass)
                        from pg_catalog.pg_trigger tg join pg_catalog.pg_proc p on p.oid = tg.tgfoid
                       where tg.tgrelid in (a.users, a.contacts) and p.pronamespace = 'usersync'::pg_catalog.regnamespace
                         and p.proname like '\_g' || a.id || '\_%');
    -- The catalog first: the DDL guard then lets the pair's triggers and policy go.
    delete from usersync.attachments x where x.id = a.id;
    foreach drop_trigger in array triggers loop
        execute drop_trigger;
    end loop;
    -- What the tables got for the engine stays while another pair uses the table.
    for t in select x.rel, x.key, c.relnamespace as nsp
               from (values (a.users, a.user_key), (a.contacts, a.contact_key)) x(rel, key)
               join pg_catalog.pg_class c on c.oid = x.rel
              where not exists (select from usersync.attachments y where x.rel in (y.users, y.contacts)) loop
        -- (the schema's USAGE too, unless another pair's table is in it; public's is everyone's)
        if t.nsp <> 'public'::pg_catalog.regnamespace
           and not exists (select from usersync.attachments y join pg_catalog.pg_class c on c.oid in (y.users, y.contacts)
                            where c.relnamespace = t.nsp) then
            execute pg_catalog.format('revoke usage on schema %s from usersync_engine', t.nsp::pg_catalog.regnamespace);
        end if;
        execute pg_catalog.format('drop policy if exists usersync_engine on %s', t.rel);
        execute pg_catalog.format('revoke all on %s from usersync_engine', t.rel);
        seq := pg_catalog.pg_get_serial_sequence(t.rel::text, t.key);
        if seq is not null then
            execute pg_catalog.format('revoke all on sequence %s from usersync_engine', seq);
        end if;
    end loop;
    for t in select p.oid::pg_catalog.regprocedure as fn from pg_catalog.pg_proc p
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace and p.proname like '\_g' || a.id || '\_%' loop
        execute pg_catalog.format('drop function %s', t.fn);
    end loop;
    perform usersync._rebuild_views();
    execute pg_catalog.format('drop table %s', usersync._links_table(a.id));
end
$$;
comment on function usersync.detach(text) is
    'Detaches a pair: removes its triggers, generated code, links and configuration; keeps both tables and every row';

-- No link active in a pair (so no pair of rows can be stale).
create or replace function usersync._pair_is_empty(p_pair text)
returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    empty boolean;
begin
    execute pg_catalog.format('select not exists (select from %s l where l.active)',
                              usersync._links_table((usersync._pair(p_pair)).id)) into empty;
    return empty;
end
$$;
