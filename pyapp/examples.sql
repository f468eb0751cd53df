-- examples.sql: the example tables of the demo and the tests, the Users and Contacts modules of the help article.
--
-- Every column is a metadata field except the key (id) and the switch (sync_to_contact).
-- Column comments are the labels shown to administrators. A DBA may add custom fields with
-- ALTER TABLE ... ADD COLUMN; the engine reads the catalog, so they appear at once.

create table if not exists public.users (
    id              bigint generated always as identity primary key,
    login           text not null unique,
    first_name      text,
    last_name       text,
    academic_title  text,
    email           text,
    phone           text,
    mobile          text,
    department      text,
    job_title       text,
    birth_date      date,
    sync_to_contact boolean not null default false
);

comment on table public.users is 'Users module';
comment on column public.users.login is 'Login';
comment on column public.users.first_name is 'First name';
comment on column public.users.last_name is 'Last name';
comment on column public.users.academic_title is 'Academic title';
comment on column public.users.email is 'Email';
comment on column public.users.phone is 'Phone';
comment on column public.users.mobile is 'Mobile';
comment on column public.users.department is 'Department';
comment on column public.users.job_title is 'Job title';
comment on column public.users.birth_date is 'Date of birth';
comment on column public.users.sync_to_contact is 'Synchronize user to contact module';

create table if not exists public.contacts (
    id          bigint generated always as identity primary key,
    title       text,
    first_name  text,
    last_name   text,
    email       text,
    phone       text,
    mobile      text,
    company     text,
    department  text,
    job_title   text,
    birthday    date,
    notes       text
);

comment on table public.contacts is 'Contacts module';
comment on column public.contacts.title is 'Title';
comment on column public.contacts.first_name is 'First name';
comment on column public.contacts.last_name is 'Last name';
comment on column public.contacts.email is 'Email';
comment on column public.contacts.phone is 'Phone';
comment on column public.contacts.mobile is 'Mobile';
comment on column public.contacts.company is 'Company';
comment on column public.contacts.department is 'Department';
comment on column public.contacts.job_title is 'Job title';
comment on column public.contacts.birthday is 'Birthday';
comment on column public.contacts.notes is 'Notes';
