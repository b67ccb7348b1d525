-- Dashboard and API users. password_hash is ASP.NET Core Identity's PasswordHasher format (PBKDF2, salted);
-- the clear password is never stored.
CREATE TABLE users (
    id             TEXT    NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    role           TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  TEXT    NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
);

-- Bearer tokens: only the SHA-256 of the token is kept. kind 'api' is a named long-lived token,
-- 'session' a short-lived one issued by POST /api/v1/auth/token.
CREATE TABLE api_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    kind          TEXT    NOT NULL CHECK (kind IN ('api', 'session')),
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at    TEXT    NOT NULL,
    expires_at    TEXT,
    last_used_at  TEXT,
    revoked_at    TEXT
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

-- Append-only record of every mutating action. No API updates or deletes rows; the triggers make
-- that true for any other writer through this database too.
CREATE TABLE audit_log (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at           TEXT    NOT NULL,
    user_name    TEXT,
    auth_method  TEXT,
    remote_addr  TEXT,
    action       TEXT    NOT NULL,
    target       TEXT,
    status       INTEGER NOT NULL,
    outcome      TEXT    NOT NULL,
    detail       TEXT
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_user ON audit_log(user_name);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
