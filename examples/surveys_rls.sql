-- A worked example of row-level security driven by pg_apikey, modelled on the seed systems:
--   users, organisations with ADMIN members, surveys owned by users (the owner or an ADMIN of the
--   survey's organisation may read; aggregate metrics only, no personal data), and Coldflow-style
--   sub-agencies whose users a key scoped to one sub-agency may list.
-- Load it as a superuser into a database that has pg_apikey:  psql -f examples/surveys_rls.sql
-- Requests run as the NOLOGIN role api_user (PostgREST switches to it after apikey.authenticate).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'api_user') THEN
        CREATE ROLE api_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN
        CREATE ROLE app_owner NOLOGIN;
    END IF;
END
$$;

CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;

CREATE TABLE app.users (
    username      text PRIMARY KEY,
    email         text NOT NULL,
    password_hash text,                     -- pgcrypto bcrypt, used by the PostgREST example
    mfa_enabled   boolean NOT NULL DEFAULT true,
    tier          text NOT NULL DEFAULT 'pro' CHECK (tier IN ('free', 'pro', 'team', 'organisation'))
);
CREATE TABLE app.organisations (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE app.memberships (
    org_id   int REFERENCES app.organisations,
    username text REFERENCES app.users,
    role     text NOT NULL CHECK (role IN ('ADMIN', 'MEMBER')),
    PRIMARY KEY (org_id, username)
);
CREATE TABLE app.surveys (
    id     int PRIMARY KEY,
    title  text NOT NULL,
    owner  text NOT NULL REFERENCES app.users,
    org_id int REFERENCES app.organisations
);
CREATE TABLE app.responses (
    id               int PRIMARY KEY,
    survey_id        int NOT NULL REFERENCES app.surveys,
    respondent_email text NOT NULL,        -- personal data: never granted to api_user
    score            int NOT NULL CHECK (score BETWEEN 1 AND 5)
);
CREATE TABLE app.sub_agencies (
    slug  text PRIMARY KEY,
    name  text NOT NULL,
    owner text NOT NULL REFERENCES app.users
);
CREATE TABLE app.agency_users (
    id         int PRIMARY KEY,
    sub_agency text NOT NULL REFERENCES app.sub_agencies,
    name       text NOT NULL,
    email      text NOT NULL
);

-- The API role reads, never writes; responses only through the columns that carry no PII.
GRANT USAGE ON SCHEMA app TO api_user;
GRANT SELECT ON app.surveys, app.memberships, app.sub_agencies, app.agency_users TO api_user;
GRANT SELECT (id, survey_id, score) ON app.responses TO api_user;

-- Every policy reads the transaction identity through apikey.* (schema-qualified, so no function
-- earlier on a caller's search_path can stand in), wrapped in a scalar subquery so it is
-- evaluated once per query. FORCE holds the tables' owner (app_owner) to the policies too.
ALTER TABLE app.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY own_memberships ON app.memberships FOR SELECT
    USING (username = (SELECT apikey.current_owner()));

ALTER TABLE app.surveys ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.surveys FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_or_org_admin ON app.surveys FOR SELECT
    USING ((SELECT apikey.has_scope('surveys:read'))
           AND (owner = (SELECT apikey.current_owner())
                OR EXISTS (SELECT 1 FROM app.memberships m
                            WHERE m.org_id = surveys.org_id AND m.role = 'ADMIN')));

ALTER TABLE app.responses ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.responses FORCE ROW LEVEL SECURITY;
CREATE POLICY responses_of_readable_surveys ON app.responses FOR SELECT
    USING (EXISTS (SELECT 1 FROM app.surveys s WHERE s.id = responses.survey_id));

ALTER TABLE app.sub_agencies ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.sub_agencies FORCE ROW LEVEL SECURITY;
CREATE POLICY owned_and_in_scope ON app.sub_agencies FOR SELECT
    USING (owner = (SELECT apikey.current_owner()) AND apikey.in_resource(slug));

ALTER TABLE app.agency_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.agency_users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_of_visible_agencies ON app.agency_users FOR SELECT
    USING (EXISTS (SELECT 1 FROM app.sub_agencies a WHERE a.slug = agency_users.sub_agency));
RESET ROLE;

-- Lookup functions with the seeds' 401 / 403 / 404 semantics as SQLSTATEs:
--   no or invalid key → 28000; authenticated but not allowed → 42501; no such row → P0002.
-- Telling 403 from 404 needs to know whether the row exists at all, which RLS hides; the
-- *_exists helpers are SECURITY DEFINER (owned by the superuser loading this file, who bypasses
-- RLS) and answer only that.
CREATE FUNCTION app.survey_exists(p_id int) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM app.surveys WHERE id = p_id) $$;
CREATE FUNCTION app.sub_agency_exists(p_slug text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM app.sub_agencies WHERE slug = p_slug) $$;
REVOKE ALL ON FUNCTION app.survey_exists(int), app.sub_agency_exists(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.survey_exists(int), app.sub_agency_exists(text) TO api_user;

CREATE FUNCTION app.get_survey(p_id int) RETURNS app.surveys
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE s app.surveys;
BEGIN
    PERFORM apikey.require_scope('surveys:read');
    SELECT * INTO s FROM app.surveys WHERE id = p_id;
    IF FOUND THEN
        RETURN s;
    END IF;
    IF app.survey_exists(p_id) THEN
        RAISE EXCEPTION 'not allowed to read survey %', p_id USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'survey % does not exist', p_id USING ERRCODE = 'P0002';
END
$$;

-- Aggregate response metrics: counts and averages, no personal data.
CREATE FUNCTION app.survey_metrics(p_id int)
    RETURNS TABLE (survey_id int, responses bigint, average_score numeric)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM app.get_survey(p_id);
    RETURN QUERY SELECT p_id, count(*), round(avg(r.score), 2) FROM app.responses r WHERE r.survey_id = p_id;
END
$$;

CREATE FUNCTION app.sub_agency_users(p_slug text) RETURNS SETOF app.agency_users
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF apikey.current_owner() IS NULL THEN
        PERFORM apikey.require_scope('*');          -- raises 28000 "API key required"
    END IF;
    IF NOT app.sub_agency_exists(p_slug) THEN
        RAISE EXCEPTION 'sub-agency % does not exist', p_slug USING ERRCODE = 'P0002';
    END IF;
    PERFORM apikey.require_resource(p_slug);
    IF NOT EXISTS (SELECT 1 FROM app.sub_agencies WHERE slug = p_slug) THEN
        RAISE EXCEPTION 'not allowed to read sub-agency %', p_slug USING ERRCODE = '42501';
    END IF;
    RETURN QUERY SELECT * FROM app.agency_users WHERE sub_agency = p_slug ORDER BY id;
END
$$;
GRANT EXECUTE ON FUNCTION app.get_survey(int), app.survey_metrics(int), app.sub_agency_users(text) TO api_user;
