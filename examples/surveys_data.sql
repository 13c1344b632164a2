-- Sample data for examples/surveys_rls.sql.
INSERT INTO app.users (username, email) VALUES
    ('alice', 'alice@example.com'), ('bob', 'bob@example.com'), ('carol', 'carol@example.com');
-- The survey seed: keys only for paid tiers with MFA configured (see apikey.creation_check).
INSERT INTO app.users (username, email, mfa_enabled, tier) VALUES
    ('dave', 'dave@example.com', true, 'free'), ('erin', 'erin@example.com', false, 'pro');
INSERT INTO app.organisations VALUES (1, 'Acme Research');
INSERT INTO app.memberships VALUES (1, 'alice', 'MEMBER'), (1, 'carol', 'ADMIN');
INSERT INTO app.surveys VALUES
    (1, 'Customer satisfaction', 'alice', 1),
    (2, 'Bob''s private poll', 'bob', NULL),
    (3, 'Employee engagement', 'alice', 1);
INSERT INTO app.responses VALUES
    (1, 1, 'r1@example.com', 4), (2, 1, 'r2@example.com', 5), (3, 1, 'r3@example.com', 3),
    (4, 2, 'r4@example.com', 2), (5, 3, 'r5@example.com', 5);
INSERT INTO app.sub_agencies VALUES
    ('marketing', 'Marketing Agency', 'alice'), ('sales', 'Sales Agency', 'alice'), ('ops', 'Bob''s Ops', 'bob');
INSERT INTO app.agency_users VALUES
    (1, 'marketing', 'Mia', 'mia@example.com'), (2, 'marketing', 'Max', 'max@example.com'),
    (3, 'sales', 'Sam', 'sam@example.com'), (4, 'ops', 'Olga', 'olga@example.com');
