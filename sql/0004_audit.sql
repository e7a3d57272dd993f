-- 0004: the audit trail and the revocation controls.
--
-- 1. Roles for people (M1.1, M1.4). Group roles without login, granted to each person's own
--    login (`ocspd role grant ...`); the CLI SETs ROLE to the one a command needs, so the
--    person stays session_user, the identity every record carries (RM3.1, AA3.1):
--      ocspd_officer  revocation officer: imports certificates, records and approves status
--                     changes;
--      ocspd_auditor  reads the audit trail and the status tables, changes nothing (AA5.1);
--      ocspd_admin    registers issuers, grants these roles, purges rows past retention.
--    ocspd_operator (0001) was all of that in one; it becomes officer plus administrator, so
--    logins that held it keep working. Superusers are members of every role anyway.
-- 2. audit_events: append-only, hash-chained records (AA7.1, AA7.2), one chain per stream.
-- 3. Dual control for status changes of CA and OCSP responder certificates (RM1.4).
-- 4. Status rows leave only through `ocspd purge`, and only 6 months past expiry and
--    revocation (pkio70).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['ocspd_officer', 'ocspd_auditor', 'ocspd_admin'] LOOP
        -- Earlier documentation named the owner's login ocspd_admin: a login of that name
        -- cannot also be the administrators' group.
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = r AND rolcanlogin) THEN
            RAISE EXCEPTION 'role % is a login, but ocspd now uses it as a group role', r
                USING HINT = format('rename the login first, e.g. ALTER ROLE %I RENAME TO ocspd_owner', r);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- a concurrent migration of another database made it (cluster-wide)
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'login % cannot create the role %', current_user, r
                        USING HINT = format('as a superuser run: CREATE ROLE %I NOLOGIN', r);
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    IF NOT (pg_has_role('ocspd_operator', 'ocspd_officer', 'MEMBER')
            AND pg_has_role('ocspd_operator', 'ocspd_admin', 'MEMBER')) THEN
        BEGIN
            GRANT ocspd_officer, ocspd_admin TO ocspd_operator;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'login % cannot make ocspd_operator an officer and administrator', current_user
                USING HINT = 'as a superuser run: GRANT ocspd_officer, ocspd_admin TO ocspd_operator';
        END;
    END IF;
END
$$;

-- --- 2. the audit trail -----------------------------------------------------------------

-- One row per event. Within a stream seq runs 1, 2, 3, ... without gaps, and
-- mac = HMAC(key, previous mac || encoding of this record) (ocspd/audit/chain.py), with 32
-- zero octets before seq 1; so a changed, deleted or reordered record breaks the chain at a
-- place `ocspd audit verify` can name. Operator actions go to stream 'operator'.
CREATE TABLE audit_events (
    stream   text NOT NULL CHECK (stream ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$'),
    seq      bigint NOT NULL CHECK (seq >= 1),
    at       timestamptz NOT NULL,      -- UTC event time from the database clock (AA8.1)
    type     text NOT NULL CHECK (type ~ '^[a-z][a-z0-9-]{0,39}$'),
    actor    text NOT NULL,             -- session_user: the login, not the role it set
    outcome  text NOT NULL CHECK (outcome ~ '^[a-z][a-z-]{0,19}$'),
    detail   jsonb NOT NULL DEFAULT '{}',
    key_id   text NOT NULL,             -- which MAC key; never the key itself
    mac      bytea NOT NULL CHECK (octet_length(mac) = 32),
    PRIMARY KEY (stream, seq)
);
-- AA4.1: search by time; type and actor filter what the time range selects.
CREATE INDEX audit_events_at ON audit_events (at);
-- verify checks every revocation request has its record.
CREATE INDEX audit_events_request ON audit_events ((detail->>'request')) WHERE detail ? 'request';

-- Writers of one stream serialise on this advisory lock key.
CREATE FUNCTION audit_lock_key(p_stream text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('ocspd audit ' || p_stream, 0) $$;

-- AA5.1, AA2.2: no role updates, deletes or truncates audit records; not even a superuser
-- without first dropping or disabling this trigger, which the chain then shows.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % refused (AA5.1)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- What every new record must be, whoever writes it: the next seq of its stream, a time not
-- before the previous record's, and the login that is connected as its actor, so nobody
-- writes in another's name. (The MAC is checked by verify: the database has no key.)
CREATE FUNCTION audit_events_check() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    last_seq bigint;
    last_at timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(audit_lock_key(NEW.stream));
    SELECT e.seq, e.at INTO last_seq, last_at
    FROM audit_events e WHERE e.stream = NEW.stream ORDER BY e.seq DESC LIMIT 1;
    IF NEW.seq <> coalesce(last_seq, 0) + 1 THEN
        RAISE EXCEPTION 'audit stream %: the next record is seq %, not %',
            NEW.stream, coalesce(last_seq, 0) + 1, NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.actor IS DISTINCT FROM session_user THEN
        RAISE EXCEPTION 'an audit record names the login that writes it (%), not %', session_user, NEW.actor
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.at < last_at OR NEW.at > greatest(clock_timestamp(), last_at) THEN
        RAISE EXCEPTION 'audit stream %: record time % is not between the previous record''s and now',
            NEW.stream, NEW.at
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_events_check BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_check();

-- The head of a stream for the next append: takes the stream's lock for the rest of the
-- transaction and returns the last seq and MAC, the event time and the connected login.
-- Open to every login: a MAC reveals nothing of the key.
CREATE FUNCTION audit_head(p_stream text, OUT seq bigint, OUT mac bytea, OUT at timestamptz, OUT actor text)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
DECLARE
    last_at timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(audit_lock_key(p_stream));
    SELECT e.seq, e.mac, e.at INTO seq, mac, last_at
    FROM audit_events e WHERE e.stream = p_stream ORDER BY e.seq DESC LIMIT 1;
    seq := coalesce(seq, 0);
    at := greatest(clock_timestamp(), last_at);
    actor := session_user;
END
$$;

-- RM3.1: refused requests are on record too, also from logins that hold no ocspd role
-- (they cannot INSERT). Only a 'refused' record of the caller's own, in the operator stream.
CREATE FUNCTION audit_refusal(p_seq bigint, p_at timestamptz, p_type text, p_detail jsonb,
                              p_key_id text, p_mac bytea) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$
    INSERT INTO audit_events (stream, seq, at, type, actor, outcome, detail, key_id, mac)
    VALUES ('operator', p_seq, p_at, p_type, session_user, 'refused', p_detail, p_key_id, p_mac)
$$;

-- --- 3. dual control (RM1.4) --------------------------------------------------------------

-- Set when the certificate's key is a TSP signing key: 'ca' (a CA certificate) or 'ocsp' (an
-- OCSP responder certificate). Set at import from the certificate itself and from the issuers
-- registry (see ocspd/store/keycerts.py); once set it never changes.
ALTER TABLE certificates ADD COLUMN key_use text CHECK (key_use IN ('ca', 'ocsp'));

ALTER TABLE revocation_requests
    -- A request for a key_use certificate: recorded pending, applied when a second officer
    -- approves it.
    ADD COLUMN needs_approval boolean NOT NULL DEFAULT false,
    ADD COLUMN approved_by text,
    ADD COLUMN refused_by text,
    ADD COLUMN refused_at timestamptz,
    -- false for requests made before this migration, which have no audit records to check.
    ADD COLUMN audited boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT decided_once CHECK (applied_at IS NULL OR refused_at IS NULL),
    ADD CONSTRAINT approval_fields CHECK (approved_by IS NULL OR (needs_approval AND applied_at IS NOT NULL)),
    ADD CONSTRAINT refusal_fields CHECK ((refused_by IS NULL) = (refused_at IS NULL));
ALTER TABLE revocation_requests ALTER COLUMN audited SET DEFAULT true;
-- RM1.1: the oldest request not yet decided.
DROP INDEX revocation_requests_pending;
CREATE INDEX revocation_requests_pending ON revocation_requests (received_at)
    WHERE applied_at IS NULL AND refused_at IS NULL;

-- A request records what was asked, by whom, and who decided it; the database fills in the
-- identities from session_user, so no client can name someone else.
CREATE FUNCTION revocation_requests_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.requested_by := session_user;
        NEW.audited := true;
        IF NEW.approved_by IS NOT NULL OR NEW.refused_by IS NOT NULL OR NEW.refused_at IS NOT NULL THEN
            RAISE EXCEPTION 'a new revocation request cannot be approved or refused already'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF NEW.needs_approval AND NEW.applied_at IS NOT NULL THEN
            RAISE EXCEPTION 'a request that needs a second officer is not applied when it is made (RM1.4)'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        IF coalesce(current_setting('ocspd.purge', true), '') <> 'on' THEN
            RAISE EXCEPTION 'revocation request % cannot be deleted; only ocspd purge removes the requests of certificates past retention (pkio70)', OLD.id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF (NEW.id, NEW.issuer_id, NEW.serial, NEW.action, NEW.reason, NEW.revoked_at,
        NEW.invalidity_date, NEW.requested_by, NEW.received_at, NEW.needs_approval, NEW.audited)
       IS DISTINCT FROM
       (OLD.id, OLD.issuer_id, OLD.serial, OLD.action, OLD.reason, OLD.revoked_at,
        OLD.invalidity_date, OLD.requested_by, OLD.received_at, OLD.needs_approval, OLD.audited) THEN
        RAISE EXCEPTION 'revocation request %: what was requested, and by whom, never changes', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.applied_at IS NOT NULL OR OLD.refused_at IS NOT NULL THEN
        IF (NEW.applied_at, NEW.refused_at, NEW.approved_by, NEW.refused_by, NEW.change_xid)
           IS DISTINCT FROM (OLD.applied_at, OLD.refused_at, OLD.approved_by, OLD.refused_by, OLD.change_xid) THEN
            RAISE EXCEPTION 'revocation request % is decided already', OLD.id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.approved_by IS NOT NULL THEN
        IF NEW.approved_by IS DISTINCT FROM session_user THEN
            RAISE EXCEPTION 'a request is approved by the login that is connected (%), not %', session_user, NEW.approved_by
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF NEW.approved_by = OLD.requested_by THEN
            RAISE EXCEPTION 'revocation request % was made by %; a second officer must approve it (RM1.4)', OLD.id, OLD.requested_by
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    ELSIF NEW.applied_at IS NOT NULL AND OLD.needs_approval THEN
        RAISE EXCEPTION 'revocation request % needs the approval of a second officer (RM1.4)', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.refused_by IS NOT NULL AND NEW.refused_by IS DISTINCT FROM session_user THEN
        RAISE EXCEPTION 'a request is refused by the login that is connected (%), not %', session_user, NEW.refused_by
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER revocation_requests_guard BEFORE INSERT OR UPDATE OR DELETE ON revocation_requests
    FOR EACH ROW EXECUTE FUNCTION revocation_requests_guard();

CREATE FUNCTION refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% cannot be truncated (%)', TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER certificates_no_truncate BEFORE TRUNCATE ON certificates
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate('RM1.3, pkio70');
CREATE TRIGGER revocation_requests_no_truncate BEFORE TRUNCATE ON revocation_requests
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate('RM3.1');

-- 0001's guard, extended:
-- RM1.3 as before: a revoked certificate never changes again; only a hold is released.
-- RM1.4: a key_use certificate changes status only in the transaction where a second
--   officer approves its request (approved_by = the connected login, change_xid = this
--   transaction), and its key_use mark stays.
-- pkio70: a status row is deleted only past 6 months after expiry and after revocation or
--   hold, and only by purge_certificates() (which marks its transaction with ocspd.purge).
--   DELETE is granted to no role; the marker only keeps the owner's own hands off too.
CREATE OR REPLACE FUNCTION certificates_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF greatest(OLD.not_after, OLD.revoked_at) >= now() - interval '6 months' THEN
            RAISE EXCEPTION 'certificate % of issuer % is %; its status row cannot be deleted until 6 months after its expiry and revocation (pkio70)',
                encode(OLD.serial, 'hex'), OLD.issuer_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation', HINT = 'RM1.3, pkio70';
        END IF;
        IF coalesce(current_setting('ocspd.purge', true), '') <> 'on' THEN
            RAISE EXCEPTION 'certificate % of issuer % is %; its status row cannot be deleted except by ocspd purge (pkio70)',
                encode(OLD.serial, 'hex'), OLD.issuer_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation', HINT = 'RM1.3, pkio70';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status = 'revoked' AND (NEW.status, NEW.revoked_at, NEW.reason, NEW.invalidity_date)
            IS DISTINCT FROM (OLD.status, OLD.revoked_at, OLD.reason, OLD.invalidity_date) THEN
        RAISE EXCEPTION 'certificate % of issuer % is revoked; revocation is final',
            encode(OLD.serial, 'hex'), OLD.issuer_id
            USING ERRCODE = 'integrity_constraint_violation', HINT = 'RM1.3';
    END IF;
    IF NEW.issuer_id <> OLD.issuer_id OR NEW.serial <> OLD.serial THEN
        RAISE EXCEPTION 'a certificate''s issuer and serial never change'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.key_use IS NOT NULL AND NEW.key_use IS DISTINCT FROM OLD.key_use THEN
        RAISE EXCEPTION 'certificate % of issuer % is marked as a % certificate; the mark never changes (RM1.4)',
            encode(OLD.serial, 'hex'), OLD.issuer_id, OLD.key_use
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.key_use IS NOT NULL
       AND (NEW.status, NEW.revoked_at, NEW.reason, NEW.invalidity_date)
           IS DISTINCT FROM (OLD.status, OLD.revoked_at, OLD.reason, OLD.invalidity_date)
       AND NOT EXISTS (
           SELECT FROM revocation_requests r
           WHERE r.issuer_id = OLD.issuer_id AND r.serial = OLD.serial AND r.needs_approval
             AND r.approved_by = session_user AND r.change_xid = pg_current_xact_id()) THEN
        RAISE EXCEPTION 'certificate % of issuer % is a % certificate: its status changes only through a request approved by a second officer (RM1.4)',
            encode(OLD.serial, 'hex'), OLD.issuer_id, NEW.key_use
            USING ERRCODE = 'integrity_constraint_violation', HINT = 'RM1.4';
    END IF;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

-- --- 4. purge past retention (pkio70) -----------------------------------------------------

-- Certificates expired, and revoked or held if at all, before p_before; none with a request
-- still waiting for a decision.
CREATE FUNCTION purge_candidates(p_before timestamptz) RETURNS TABLE (issuer_id integer, serial bytea)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT c.issuer_id, c.serial FROM certificates c
    WHERE c.not_after < p_before AND (c.revoked_at IS NULL OR c.revoked_at < p_before)
      AND NOT EXISTS (SELECT FROM revocation_requests r
                      WHERE r.issuer_id = c.issuer_id AND r.serial = c.serial
                        AND r.applied_at IS NULL AND r.refused_at IS NULL)
$$;

-- Called twice in one transaction by `ocspd purge`: with p_apply false it locks and counts
-- what would go (and a digest of which rows); the caller then appends the 'purge' audit record
-- naming those counts; with p_apply true it checks that record is this transaction's newest
-- operator record and deletes. So rows past retention leave only with their audit record.
CREATE FUNCTION purge_certificates(p_before timestamptz, p_apply boolean,
    OUT certificates bigint, OUT responses bigint, OUT requests bigint, OUT kept_pending bigint,
    OUT digest text)
LANGUAGE plpgsql SECURITY DEFINER AS $$
#variable_conflict use_column
BEGIN
    IF p_before > now() - interval '6 months' THEN
        RAISE EXCEPTION 'purge cutoff % is within the 6 months status rows are kept after expiry and revocation (pkio70); the latest allowed is %',
            p_before, now() - interval '6 months'
            USING ERRCODE = 'integrity_constraint_violation', HINT = 'pkio70';
    END IF;
    PERFORM 1 FROM certificates c
    WHERE (c.issuer_id, c.serial) IN (SELECT * FROM purge_candidates(p_before)) FOR UPDATE;
    SELECT count(*), encode(sha256(convert_to(coalesce(
               string_agg(p.issuer_id::text || ':' || encode(p.serial, 'hex'), ',' ORDER BY p.issuer_id, p.serial),
               ''), 'UTF8')), 'hex')
      INTO certificates, digest FROM purge_candidates(p_before) p;
    SELECT count(*) INTO responses FROM ocsp_responses o
    WHERE (o.issuer_id, o.serial) IN (SELECT * FROM purge_candidates(p_before));
    SELECT count(*) INTO requests FROM revocation_requests r
    WHERE (r.issuer_id, r.serial) IN (SELECT * FROM purge_candidates(p_before));
    SELECT count(*) INTO kept_pending FROM certificates c
    WHERE c.not_after < p_before AND (c.revoked_at IS NULL OR c.revoked_at < p_before)
      AND (c.issuer_id, c.serial) NOT IN (SELECT * FROM purge_candidates(p_before));
    IF NOT p_apply THEN
        RETURN;
    END IF;
    IF NOT EXISTS (
        SELECT FROM (SELECT e.type, e.actor, e.outcome, e.detail, e.xmin AS writer
                     FROM audit_events e WHERE e.stream = 'operator'
                     ORDER BY e.seq DESC LIMIT 1) h
        WHERE h.type = 'purge' AND h.outcome = 'applied' AND h.actor = session_user
          AND h.writer = pg_current_xact_id()::xid
          AND (h.detail->>'before')::timestamptz = p_before
          AND (h.detail->>'certificates')::bigint = certificates
          AND h.detail->>'digest' = digest) THEN
        RAISE EXCEPTION 'a purge is applied only with its audit record, written first in the same transaction (use ocspd purge)'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    PERFORM set_config('ocspd.purge', 'on', true);
    DELETE FROM ocsp_responses o WHERE (o.issuer_id, o.serial) IN (SELECT * FROM purge_candidates(p_before));
    DELETE FROM revocation_requests r WHERE (r.issuer_id, r.serial) IN (SELECT * FROM purge_candidates(p_before));
    DELETE FROM certificates c WHERE (c.issuer_id, c.serial) IN (SELECT * FROM purge_candidates(p_before));
    PERFORM set_config('ocspd.purge', '', true);
END
$$;

-- --- roles --------------------------------------------------------------------------------

-- `ocspd role grant|revoke`: runs as the schema owner, who must be able to grant the roles
-- (superuser, or CREATEROLE / ADMIN OPTION on them); callable by ocspd_admin only. Refuses
-- what M1.4 forbids: an auditor who is also an officer or administrator.
CREATE FUNCTION ocspd_role_membership(p_role text, p_login text, p_member boolean) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    target pg_roles;
BEGIN
    IF p_role NOT IN ('ocspd_officer', 'ocspd_auditor', 'ocspd_admin') THEN
        RAISE EXCEPTION '% is not an ocspd role', p_role USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO target FROM pg_roles WHERE rolname = p_login;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no login named %', p_login USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT target.rolcanlogin THEN
        RAISE EXCEPTION '% is not a login; roles are granted to the logins of people', p_login
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF target.rolsuper THEN
        RAISE EXCEPTION '% is a superuser, which holds every role already', p_login
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_member THEN
        IF p_role = 'ocspd_auditor' AND (pg_has_role(p_login, 'ocspd_officer', 'MEMBER')
                                         OR pg_has_role(p_login, 'ocspd_admin', 'MEMBER')) THEN
            RAISE EXCEPTION '% is an officer or administrator; an auditor may be neither (M1.4)', p_login
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF p_role <> 'ocspd_auditor' AND pg_has_role(p_login, 'ocspd_auditor', 'MEMBER') THEN
            RAISE EXCEPTION '% is an auditor; an auditor may not be an officer or administrator (M1.4)', p_login
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF pg_has_role(p_login, p_role, 'MEMBER') THEN
            RETURN 'unchanged';
        END IF;
        EXECUTE format('GRANT %I TO %I', p_role, p_login);
        RETURN 'granted';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
                   WHERE r.rolname = p_role AND m.member = target.oid) THEN
        RETURN CASE WHEN pg_has_role(p_login, p_role, 'MEMBER') THEN 'indirect' ELSE 'unchanged' END;
    END IF;
    EXECUTE format('REVOKE %I FROM %I', p_role, p_login);
    RETURN 'revoked';
END
$$;

-- SECURITY DEFINER functions resolve names in this schema only, never in pg_temp first.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'audit_events_check()', 'audit_head(text)',
        'audit_refusal(bigint, timestamptz, text, jsonb, text, bytea)',
        'purge_candidates(timestamptz)', 'purge_certificates(timestamptz, boolean)',
        'ocspd_role_membership(text, text, boolean)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END
$$;

-- --- privileges ---------------------------------------------------------------------------

REVOKE ALL ON audit_events FROM PUBLIC;
GRANT SELECT ON audit_events TO ocspd_auditor;
GRANT INSERT ON audit_events TO ocspd_officer, ocspd_admin;

-- ocspd_operator now has what officer and administrator have, through them.
REVOKE ALL ON issuers, certificates, revocation_requests, ocsp_responses, crls FROM ocspd_operator;

GRANT SELECT ON issuers TO ocspd_officer;
GRANT SELECT, INSERT, UPDATE ON certificates, revocation_requests TO ocspd_officer;

GRANT SELECT ON issuers, certificates, revocation_requests, crls TO ocspd_auditor;

GRANT SELECT, INSERT ON issuers TO ocspd_admin;
GRANT SELECT ON certificates, revocation_requests TO ocspd_admin;
GRANT UPDATE (key_use) ON certificates TO ocspd_admin;

REVOKE ALL ON FUNCTION purge_candidates(timestamptz), purge_certificates(timestamptz, boolean),
    ocspd_role_membership(text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_certificates(timestamptz, boolean),
    ocspd_role_membership(text, text, boolean) TO ocspd_admin;
