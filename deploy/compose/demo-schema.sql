-- The demo schema of `deploy/local/up`, the tests (loadtest/testkit/src/cluster.rs includes this file) and this compose demo.
-- Run after the gateway created the Directus system tables (articles.author references directus_users).
CREATE TABLE IF NOT EXISTS articles (
    id serial PRIMARY KEY,
    title varchar(255) NOT NULL,
    status varchar(20) NOT NULL DEFAULT 'draft',
    date_created timestamptz NOT NULL DEFAULT now(),
    author uuid REFERENCES directus_users(id) ON DELETE SET NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id serial PRIMARY KEY,
    text text NOT NULL,
    user_created uuid REFERENCES directus_users(id) ON DELETE SET NULL,
    date_created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO articles (title, status, author)
SELECT t.title, t.status, (SELECT id FROM directus_users ORDER BY email LIMIT 1)
FROM (VALUES ('Hello realtime', 'published'), ('Draft ideas', 'draft'), ('Release notes', 'published')) AS t(title, status)
WHERE NOT EXISTS (SELECT 1 FROM articles);
INSERT INTO messages (text) SELECT 'Welcome!' WHERE NOT EXISTS (SELECT 1 FROM messages);
