-- The seeds' HTTP API on PostgREST, over examples/surveys_rls.sql (load that first, as a
-- superuser; pgcrypto, where the server has it, hashes the login example's passwords). PostgREST serves schema api; nginx (examples/nginx.conf)
-- maps the seeds' paths onto it. apikey.pre_request, PostgREST's db-pre-request, authenticates and
-- answers 401 to a request without a key (except on apikey.anonymous_paths); endpoints check again.

-- POST /user/key/ checks passwords with pgcrypto's bcrypt. A server without pgcrypto gets
-- everything else; that one endpoint then answers 403 to every login.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    ELSE
        RAISE NOTICE 'pgcrypto is not available: POST /user/key/ will refuse every login';
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'web_anon') THEN
        CREATE ROLE web_anon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jwt_user') THEN
        CREATE ROLE jwt_user NOLOGIN;               -- for comparing with PostgREST's own JWT auth
    END IF;
END
$$;
-- PostgREST logs in as authenticator and switches to one of these per request.
GRANT web_anon, api_user, jwt_user TO authenticator;
-- Keys switch to api_user unless they name a role of their own.
ALTER ROLE authenticator SET apikey.default_role = 'api_user';
-- PostgREST connects over the Unix socket; nginx overwrites X-Forwarded-For with the client's
-- address, so the header can be trusted from this peer only (keys with allowed_ips use it).
ALTER ROLE authenticator SET apikey.trusted_proxies = 'local';
-- Every request needs a key (401 without one), except the seed's login endpoint, which issues keys,
-- and the Cool Farm Tool endpoint, which answers 403 itself as that seed documents.
ALTER ROLE authenticator SET apikey.anonymous_paths = '/rpc/user_key, /rpc/cft_user';
-- PostgREST's anonymous role, also as in-database configuration: pg_apikey reads it to tell a
-- request PostgREST authenticated with a JWT from an anonymous one (docs/postgrest.md).
ALTER ROLE authenticator SET pgrst.db_anon_role = 'web_anon';
-- GET /rpc/reports refuses keys holding reports:embargoed: a restriction its holders cannot shed.
-- Declared for the whole database, so it holds in every session (SQL as well as HTTP).
DO $$ BEGIN
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET apikey.deny_scopes = %L',
                              pg_catalog.current_database(), 'reports:embargoed');
END $$;
-- Keys travel in request.headers, a bind parameter: keep parameters out of the log.
ALTER ROLE authenticator SET log_parameter_max_length = 0;
ALTER ROLE authenticator SET log_parameter_max_length_on_error = 0;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgcrypto') THEN
        EXECUTE $u$UPDATE app.users SET password_hash = public.crypt(username || '-password', public.gen_salt('bf', 8))$u$;
    END IF;
END
$$;

-- The survey seed's preconditions for API keys, checked by apikey.create for every key made
-- through the API (apikey.creation_check). Owners that are not app users (applications) pass.
CREATE FUNCTION app.may_create_keys(owner text) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE u record;
BEGIN
    SELECT x.mfa_enabled, x.tier INTO u FROM app.users x WHERE x.username = owner;
    IF FOUND AND NOT u.mfa_enabled THEN
        RAISE EXCEPTION 'MFA must be configured on your account before you can create API keys' USING ERRCODE = '42501';
    END IF;
    IF FOUND AND u.tier = 'free' THEN
        RAISE EXCEPTION 'API keys are not available on free tier accounts' USING ERRCODE = '42501';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION app.may_create_keys(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.may_create_keys(text) TO PUBLIC;
-- For the whole database, so the rule holds for a key used from any login, not only the API's.
DO $$ BEGIN
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET apikey.creation_check = %L',
                              pg_catalog.current_database(), 'app.may_create_keys(text)');
END $$;

CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO web_anon, api_user, jwt_user;

CREATE FUNCTION api.need_key() RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF apikey.current_owner() IS NULL THEN
        PERFORM apikey.http_error(401, 'Unauthorized', 'API key required');
    END IF;
END
$$;

-- GET /api/surveys/ : surveys the key's owner may read (own, or as an org ADMIN).
CREATE FUNCTION api.surveys() RETURNS SETOF json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM api.need_key();
    RETURN QUERY SELECT json_build_object('id', s.id, 'title', s.title, 'owner', s.owner, 'org_id', s.org_id)
                   FROM app.surveys s ORDER BY s.id;
END
$$;

-- GET /api/surveys/{id}/ : 403 without rights, 404 if there is no such survey.
CREATE FUNCTION api.survey(id integer) RETURNS json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE s app.surveys; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        s := app.get_survey(id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('id', s.id, 'title', s.title, 'owner', s.owner, 'org_id', s.org_id);
END
$$;

-- GET /api/surveys/{id}/metrics/responses/ : aggregates only, no personal data. Aggregates are
-- the expensive call: it charges the key's (and its owner's) "expensive" limit, if it has one
-- (if_defined: keys without one are not limited here).
CREATE FUNCTION api.survey_metrics(id integer) RETURNS json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE r json; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        PERFORM apikey.charge('expensive', if_defined => true);
        SELECT json_build_object('survey_id', x.survey_id, 'responses', x.responses, 'average_score', x.average_score)
          INTO r FROM app.survey_metrics(id) x;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN r;
END
$$;

-- GET /api/sub-agencies : the sub-agencies the key may reach.
CREATE FUNCTION api.sub_agencies() RETURNS SETOF json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM api.need_key();
    RETURN QUERY SELECT json_build_object('slug', a.slug, 'name', a.name) FROM app.sub_agencies a ORDER BY a.slug;
END
$$;

-- GET /api/sub-agencies/{slug}/users : 403 for a key scoped to another sub-agency.
CREATE FUNCTION api.sub_agency_users(slug text) RETURNS SETOF json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE rows json[]; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        SELECT array_agg(json_build_object('id', u.id, 'name', u.name, 'email', u.email) ORDER BY u.id)
          INTO rows FROM app.sub_agency_users(slug) u;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN QUERY SELECT unnest(coalesce(rows, '{}'));
END
$$;

-- GET /api/keys : the owner's keys, masked, with their scopes. "current" marks the key the request
-- was made with; "stops_at" is when a key in a rotation's grace stops working; "manageable" says
-- whether the requesting key may act on it (revoke, disable, rotate, delete), which it may only
-- for keys within its own rights. apikey.credits makes exactly the check those functions make
-- and changes nothing, so its refusal answers the question without attempting an action.
CREATE FUNCTION api.keys() RETURNS SETOF json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE k record; manageable boolean;
BEGIN
    PERFORM api.need_key();
    -- key_list shows an administrator every owner's keys: name the owner.
    FOR k IN SELECT * FROM apikey.key_list l WHERE l.owner = apikey.current_owner() ORDER BY l.id LOOP
        BEGIN
            PERFORM apikey.credits(k.id);
            manageable := true;
        EXCEPTION WHEN insufficient_privilege OR no_data_found OR invalid_authorization_specification THEN
            manageable := false;
        END;
        RETURN NEXT json_build_object('id', k.id, 'name', k.name, 'key', k.key, 'status', k.status,
                                      'scopes', k.scopes, 'sub_agency', k.resource, 'created_at', k.created_at,
                                      'expires_at', k.expires_at, 'last_used_at', k.last_used_at,
                                      'stops_at', CASE WHEN k.revoked_at > now() THEN k.revoked_at END,
                                      'rotated_from', k.rotated_from,
                                      'current', coalesce(k.id = apikey.current_key_id(), false),
                                      'manageable', manageable);
    END LOOP;
END
$$;

-- GET /api/keys/usage : for each of the owner's keys, uses and refusals per hour over the last 24
-- hours (oldest hour first), for the API Keys page's charts. apikey.usage is for administrators
-- only, so this runs with its owner's rights and must name the owner itself: apikey.key_list
-- would show every key to a definer that is an administrator.
CREATE FUNCTION api.key_usage() RETURNS SETOF json
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    last_hour timestamptz := date_trunc('hour', now());
    first_hour timestamptz := last_hour - interval '23 hours';
BEGIN
    PERFORM api.need_key();
    RETURN QUERY
    WITH hourly AS (
        SELECT u.key_id, date_trunc('hour', u.bucket) AS hour, sum(u.uses) AS uses,
               sum(u.expired + u.revoked + u.rate_limited + u.denied) AS refused
          FROM apikey.usage u JOIN apikey.keys k ON k.id = u.key_id
         WHERE k.owner = apikey.current_owner() AND u.bucket >= first_hour
         GROUP BY 1, 2
    )
    SELECT json_build_object('key_id', k.id, 'first_hour', first_hour,
                             'uses', array_agg(coalesce(h.uses, 0) ORDER BY s.hour),
                             'refused', array_agg(coalesce(h.refused, 0) ORDER BY s.hour))
      FROM apikey.keys k
     CROSS JOIN generate_series(first_hour, last_hour, interval '1 hour') AS s(hour)
      LEFT JOIN hourly h ON h.key_id = k.id AND h.hour = s.hour
     WHERE k.owner = apikey.current_owner()
     GROUP BY k.id
     ORDER BY k.id;
END
$$;
REVOKE ALL ON FUNCTION api.key_usage() FROM PUBLIC;

-- POST /api/keys {"name": …, "expires_in_days": 30|60|90|180|365|null, "sub_agency": …}:
-- a new key for the same owner, shown once; 5 per hour per owner, then 429 with Retry-After.
-- Every argument has a default and expires_in_days is text, so that a missing name or an odd
-- number of days reaches this function and is answered here, in the API's words (400), not by
-- PostgREST (404 PGRST202 listing the parameters, or 22P02 for 30.5).
-- "scopes" (a JSON array, optional): fewer scopes than the signing key's; none it lacks (403).
CREATE FUNCTION api.create_key(name text DEFAULT NULL, expires_in_days text DEFAULT NULL, sub_agency text DEFAULT NULL,
                               scopes text[] DEFAULT NULL)
    RETURNS json LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE k record; st text; m text; d text; days integer;
BEGIN
    PERFORM api.need_key();
    IF name IS NULL OR btrim(name) = '' THEN
        PERFORM apikey.http_error(400, 'Bad Request', 'name is required');
    END IF;
    IF expires_in_days IS NOT NULL THEN
        IF btrim(expires_in_days) NOT IN ('30', '60', '90', '180', '365') THEN
            PERFORM apikey.http_error(400, 'Bad Request', 'expires_in_days must be 30, 60, 90, 180, 365 or null');
        END IF;
        days := btrim(expires_in_days)::integer;
    END IF;
    BEGIN
        SELECT c.id, c.api_key INTO k
          FROM apikey.create(apikey.current_owner(), name,
                             CASE WHEN days IS NULL THEN NULL ELSE make_interval(days => days) END,
                             scopes => coalesce(create_key.scopes, apikey.current_scopes()),
                             resource => coalesce(sub_agency, apikey.current_resource()),
                             format => 'ct_live') c;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    -- What the key really got, and whether the signing key decided it: a key made with a key never
    -- outlives it and reaches no sub-agency but its own (apikey.create caps the expiry to the
    -- signing key's and inherits its resource), so "never" or "all" may come back as a date or a
    -- sub-agency. Scopes as stored: restrictions the signing key holds are added to those asked for.
    RETURN (SELECT json_build_object('id', k.id, 'name', l.name, 'key', k.api_key::text,
                                     'expires_at', l.expires_at, 'sub_agency', l.resource, 'scopes', l.scopes,
                                     'expiry_capped', coalesce(l.expires_at = s.expires_at, false),
                                     'sub_agency_capped', create_key.sub_agency IS NULL AND l.resource IS NOT NULL,
                                     'note', 'Copy this key now: it is shown once and cannot be retrieved again.')
              FROM apikey.key_list l LEFT JOIN apikey.key_list s ON s.id = apikey.current_key_id()
             WHERE l.id = k.id);
END
$$;

-- DELETE /api/keys/{id} : immediate and irreversible; 404 for a key that is not the owner's.
CREATE FUNCTION api.delete_key(id bigint) RETURNS json LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        PERFORM apikey.delete(id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('deleted', id);
END
$$;

-- The Cool Farm Tool two-key endpoint: both an application key and a user key, else 403.
CREATE FUNCTION api.cft_user() RETURNS json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    IF apikey.current_app() IS NULL THEN
        PERFORM apikey.http_error(403, 'Forbidden', 'an application key and a user key are required');
    END IF;
    RETURN json_build_object('user', apikey.current_owner(), 'application', apikey.current_app());
END
$$;

-- POST /user/key/ (username, password): keys are stored only as digests, so the user's key
-- cannot be looked up; a fresh one is issued (and says so). bcrypt via pgcrypto; the
-- password is never stored in the clear. SECURITY DEFINER: it creates keys for another owner.
CREATE FUNCTION api.user_key(username text, password text) RETURNS json
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE stored text; k record; st text; m text; d text;
BEGIN
    IF username IS NULL OR password IS NULL OR length(username) > 200 OR length(password) > 200 THEN
        PERFORM apikey.http_error(400, 'Bad Request', 'username and password are required (at most 200 characters each)');
    END IF;
    -- Password guessing: at most 5 attempts per user name and minute, right or wrong, known user
    -- or not. The limiter lives in shared memory, so the error below gives nothing back.
    BEGIN
        PERFORM apikey.rate_limit('user_key:' || md5(lower(username)), 5, '1 minute');
    EXCEPTION WHEN SQLSTATE '53400' THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    SELECT u.password_hash INTO stored FROM app.users u WHERE u.username = user_key.username;
    -- Two statements: without pgcrypto no hash is stored, and crypt() is never planned. An
    -- unknown user costs the same bcrypt as a known one, so the answer's time tells nothing.
    IF stored IS NULL THEN
        IF pg_catalog.to_regprocedure('public.gen_salt(text,integer)') IS NOT NULL THEN
            PERFORM public.crypt(password, public.gen_salt('bf', 8));
        END IF;
        PERFORM apikey.http_error(403, 'Forbidden', 'invalid username or password');
    END IF;
    IF public.crypt(password, stored) IS DISTINCT FROM stored THEN
        PERFORM apikey.http_error(403, 'Forbidden', 'invalid username or password');
    END IF;
    BEGIN
        SELECT c.id, c.api_key INTO k FROM apikey.create(username, 'issued by POST /user/key/', format => 'cft') c;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('api_key', k.api_key::text, 'key_id', k.id,
        'note', 'Keys are stored only as digests, so a new key was issued; earlier keys keep working.');
END
$$;
REVOKE ALL ON FUNCTION api.user_key(text, text) FROM PUBLIC;

-- GET /rpc/reports : a permission expression over the key's scopes (403 if it does not hold).
CREATE FUNCTION api.reports() RETURNS json LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM api.need_key();
    IF NOT apikey.has_permissions('surveys:read AND NOT reports:embargoed') THEN
        PERFORM apikey.http_error(403, 'Forbidden', 'this key may not read reports');
    END IF;
    RETURN json_build_object('reports', json_build_array('q3'));
END
$$;

-- For the benchmark: one small endpoint that needs nothing, and a pre-request that does nothing.
CREATE FUNCTION api.whoami() RETURNS json LANGUAGE sql STABLE
    AS $$ SELECT json_build_object('owner', apikey.current_owner(), 'role', current_user) $$;
CREATE FUNCTION api.noop_pre_request() RETURNS void LANGUAGE sql AS $$ SELECT $$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA api TO web_anon, api_user, jwt_user;
GRANT EXECUTE ON FUNCTION api.user_key(text, text) TO web_anon, api_user;

-- POST /api/secret-scanning : a secret scanner's leak report in GitHub's partner format
-- ([{token, type, url, source}] -> [{token_hash, token_type, label}]). Every reported key stored
-- here is revoked at once. The scanner gets an ordinary key of the owner "security" whose scopes
-- name leaks:report explicitly, made by an administrator, e.g.
-- apikey.create('security', 'github scanner', scopes => '{leaks:report}'): that key is no
-- administrator (on every other endpoint it is just a key of owner "security"). Both are checked:
-- a scope alone proves nothing, since any unscoped key may create a key with any scope, but only
-- for its own owner. The report itself needs administrator rights, so it runs as this function's
-- owner.
-- One unnamed jsonb parameter: PostgREST passes the whole request body (a JSON array).
CREATE FUNCTION api.secret_scanning(jsonb) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM api.need_key();
    IF apikey.current_owner() IS DISTINCT FROM 'security'
       OR NOT 'leaks:report' = ANY (COALESCE(apikey.current_scopes(), '{}')) THEN
        PERFORM apikey.http_error(403, 'Forbidden', 'this key may not report leaked keys');
    END IF;
    RETURN apikey.secret_scanning($1);
END
$$;
REVOKE ALL ON FUNCTION api.secret_scanning(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.secret_scanning(jsonb) TO api_user;

-- The API Keys page (examples/web/): what the signed-in key may do, and its actions on the
-- owner's keys. Each action has the rights of the requesting key alone: apikey.revoke, disable,
-- enable and rotate answer 404 for a key of another owner and 403 for a key wider than the
-- requesting one. A key whose state forbids the action (revoked, expired, disabled, already being
-- replaced: 55000) is a 409, with pg_apikey's message.

-- GET /api/keys/session : the requesting key and the bounds of every key it may create: its
-- expiry, sub-agency and scopes (a new key never exceeds them), the scopes of this API it may hand
-- on (restrictions listed in apikey.deny_scopes pass to every key it makes), the lifetime
-- settings, the longest rotation grace, and what is left of the owner's creation quota. The
-- quota's state (apikey.rate_limits) is readable by the extension's owner only, so this runs with
-- its owner's rights and reads the requesting owner's own bucket and key, by name and id.
CREATE FUNCTION api.key_session() RETURNS json
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    who text := apikey.current_owner();
    mine record;
    deny text[];
    grantable json;
    quota_limit integer;
    period_s bigint;
    now_us bigint;
    live bigint[];
    quota json;
BEGIN
    PERFORM api.need_key();
    SELECT k.id, k.name, k.expires_at INTO mine
      FROM apikey.keys k WHERE k.id = apikey.current_key_id() AND k.owner = who;
    deny := ARRAY(SELECT btrim(x) FROM unnest(string_to_array(current_setting('apikey.deny_scopes', true), ',')) x
                   WHERE btrim(x) <> '');
    -- The scopes this API's endpoints test (examples/surveys_rls.sql, api.reports).
    SELECT json_agg(json_build_object('scope', c.scope, 'description', c.description,
                                      'restriction', c.restriction) ORDER BY c.restriction, c.scope)
      INTO grantable
      FROM (SELECT v.scope, v.description, false AS restriction
              FROM (VALUES ('surveys:read', 'Read surveys, their response metrics and reports.')) AS v(scope, description)
             WHERE v.scope <> ALL (deny)
            UNION ALL
            SELECT dn.scope, 'A restriction: endpoints that exclude it refuse keys holding it.', true
              FROM unnest(deny) AS dn(scope)) c
     WHERE apikey.has_scope(c.scope);
    SELECT s.setting::integer INTO quota_limit FROM pg_settings s WHERE s.name = 'apikey.creation_limit';
    SELECT s.setting::bigint INTO period_s FROM pg_settings s WHERE s.name = 'apikey.creation_period';
    -- The quota's own arithmetic (a sliding window over the bucket's event times, in epoch
    -- microseconds): the events still inside the window, oldest first.
    IF quota_limit > 0 THEN
        now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        live := ARRAY(SELECT h FROM apikey.rate_limits q, unnest(q.hits) h
                       WHERE q.bucket = 'create:' || who AND h > now_us - period_s * 1000000 ORDER BY h);
        quota := json_build_object(
            'limit', quota_limit, 'period_seconds', period_s, 'used', cardinality(live),
            'remaining', greatest(quota_limit - cardinality(live), 0),
            'next_slot_at', CASE WHEN cardinality(live) >= quota_limit
                                 THEN to_timestamp((live[cardinality(live) - quota_limit + 1] + period_s * 1000000) / 1e6) END);
    END IF;
    RETURN json_build_object(
        'key_id', mine.id, 'name', mine.name, 'owner', who, 'expires_at', mine.expires_at,
        'scopes', apikey.current_scopes(), 'sub_agency', apikey.current_resource(),
        'grantable_scopes', coalesce(grantable, '[]'::json),
        'default_lifetime_seconds', (SELECT nullif(s.setting::bigint, 0) FROM pg_settings s WHERE s.name = 'apikey.default_lifetime'),
        'max_lifetime_seconds', (SELECT nullif(s.setting::bigint, 0) FROM pg_settings s WHERE s.name = 'apikey.max_lifetime'),
        'max_rotation_grace_seconds', (SELECT s.setting::bigint FROM pg_settings s WHERE s.name = 'apikey.max_rotation_grace'),
        'creation_quota', quota);
END
$$;
REVOKE ALL ON FUNCTION api.key_session() FROM PUBLIC;

-- POST /api/keys/{id}/revoke : the key stops working now and for good; it stays listed (revoked)
-- until deleted. "changed" is false if it already was revoked.
CREATE FUNCTION api.revoke_key(id bigint) RETURNS json LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE changed boolean; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        changed := apikey.revoke(id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        IF st = '55000' THEN
            PERFORM apikey.http_error(409, 'Conflict', m);
        END IF;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('id', id, 'status', 'revoked', 'changed', changed);
END
$$;

-- POST /api/keys/{id}/disable : refused (401 "API key is disabled") until enabled again.
CREATE FUNCTION api.disable_key(id bigint) RETURNS json LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE changed boolean; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        changed := apikey.disable(id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        IF st = '55000' THEN
            PERFORM apikey.http_error(409, 'Conflict', m);
        END IF;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('id', id, 'status', 'disabled', 'changed', changed);
END
$$;

-- POST /api/keys/{id}/enable : a disabled key works again (a revoked one cannot: 409).
CREATE FUNCTION api.enable_key(id bigint) RETURNS json LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE changed boolean; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    BEGIN
        changed := apikey.enable(id);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        IF st = '55000' THEN
            PERFORM apikey.http_error(409, 'Conflict', m);
        END IF;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN json_build_object('id', id, 'status', 'active', 'changed', changed);
END
$$;

-- POST /api/keys/{id}/rotate?grace_seconds=N : a new key with the old one's name, scopes,
-- sub-agency and lifetime (never past the requesting key's expiry), shown once. The old key keeps
-- working for N seconds (default 0: it stops now; more than apikey.max_rotation_grace is a 400).
-- A rotation makes a key, so it counts against the creation quota (429).
CREATE FUNCTION api.rotate_key(id bigint, grace_seconds integer DEFAULT 0) RETURNS json
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS
$$
DECLARE r record; st text; m text; d text;
BEGIN
    PERFORM api.need_key();
    IF grace_seconds IS NULL OR grace_seconds < 0 THEN
        PERFORM apikey.http_error(400, 'Bad Request', 'grace_seconds must be a number of seconds, 0 or more');
    END IF;
    BEGIN
        SELECT c.id, c.api_key INTO r FROM apikey.rotate(rotate_key.id, make_interval(secs => grace_seconds)) c;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
        IF st = '55000' THEN
            PERFORM apikey.http_error(409, 'Conflict', m);
        END IF;
        PERFORM apikey.raise_http(st, m, d);
    END;
    RETURN (SELECT json_build_object('id', n.id, 'rotated_from', o.id, 'name', n.name, 'key', r.api_key::text,
                                     'expires_at', n.expires_at, 'sub_agency', n.resource, 'scopes', n.scopes,
                                     'old_key_stops_at', o.revoked_at,
                                     'note', 'Copy this key now: it is shown once and cannot be retrieved again.')
              FROM apikey.key_list n, apikey.key_list o
             WHERE n.id = r.id AND o.id = rotate_key.id);
END
$$;

GRANT EXECUTE ON FUNCTION api.key_session(), api.revoke_key(bigint), api.disable_key(bigint), api.enable_key(bigint),
                          api.rotate_key(bigint, integer) TO web_anon, api_user, jwt_user;
