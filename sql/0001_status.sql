-- 0001: issuers, certificates, revocation requests, and the two roles.
--
-- Roles are cluster-wide, so they are created only when missing. The responder reads status
-- and can change nothing (R11); the operator (the revocation manager) records changes.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ocspd_responder') THEN
        CREATE ROLE ocspd_responder NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ocspd_operator') THEN
        CREATE ROLE ocspd_operator NOLOGIN;
    END IF;
END
$$;

-- Whoever migrates may SET ROLE to both, so that a single OCSPD_DATABASE_URL serves the
-- responder and the CLI alike. A superuser may SET ROLE anyway; a login without CREATEROLE
-- needs a DBA to grant the roles first, which the message says.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT (pg_has_role(current_user, 'ocspd_responder', 'MEMBER')
                AND pg_has_role(current_user, 'ocspd_operator', 'MEMBER')) THEN
        BEGIN
            EXECUTE format('GRANT ocspd_responder, ocspd_operator TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'login % cannot use the roles ocspd_responder and ocspd_operator', current_user
                USING HINT = format('as a superuser run: GRANT ocspd_responder, ocspd_operator TO %I', current_user);
        END;
    END IF;
END
$$;

CREATE TABLE issuers (
    id                  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    ca_cert_der         bytea NOT NULL,
    subject_der         bytea NOT NULL,
    spki_der            bytea NOT NULL,
    -- CertID hashes (RFC 6960 4.1.1): of the DER issuer name and of the BIT STRING content
    -- of the issuer's public key, in SHA-1 and SHA-256, so either kind of request finds it.
    name_sha1           bytea NOT NULL CHECK (octet_length(name_sha1) = 20),
    key_sha1            bytea NOT NULL CHECK (octet_length(key_sha1) = 20),
    name_sha256         bytea NOT NULL CHECK (octet_length(name_sha256) = 32),
    key_sha256          bytea NOT NULL CHECK (octet_length(key_sha256) = 32),
    not_before          timestamptz NOT NULL,
    not_after           timestamptz NOT NULL,
    -- NULL: the CA signs its own responses with responder_key.
    responder_cert_der  bytea,
    responder_key       text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- One CA generation once: the same certificate cannot be registered under two names.
    UNIQUE (ca_cert_der)
);
-- Several generations of a CA may share a name hash; the key hash tells them apart.
CREATE INDEX issuers_sha1 ON issuers (name_sha1, key_sha1);
CREATE INDEX issuers_sha256 ON issuers (name_sha256, key_sha256);

CREATE TYPE cert_status AS ENUM ('good', 'revoked', 'hold');

CREATE TABLE certificates (
    issuer_id        integer NOT NULL REFERENCES issuers (id),
    -- Big-endian magnitude of the serial: up to 20 octets (pkio177), never a bigint.
    serial           bytea NOT NULL CHECK (octet_length(serial) BETWEEN 1 AND 20),
    not_before       timestamptz,           -- unknown when imported from an openssl index
    not_after        timestamptz NOT NULL,
    status           cert_status NOT NULL DEFAULT 'good',
    revoked_at       timestamptz,
    -- RFC 5280 5.3.1 CRLReason; 7 is unused, 8 (removeFromCRL) belongs to delta CRLs only.
    reason           smallint CHECK (reason BETWEEN 0 AND 10 AND reason NOT IN (7, 8)),
    invalidity_date  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (issuer_id, serial),
    CONSTRAINT status_fields CHECK (
        (status = 'good' AND revoked_at IS NULL AND reason IS NULL AND invalidity_date IS NULL)
        OR (status = 'hold' AND revoked_at IS NOT NULL AND reason = 6)
        OR (status = 'revoked' AND revoked_at IS NOT NULL AND reason IS NOT NULL AND reason <> 6)
    )
);
-- crlgen and status reports read revoked and held entries per issuer.
CREATE INDEX certificates_not_good ON certificates (issuer_id, serial) WHERE status <> 'good';

-- RM1.3: a revoked certificate never changes again (not back to good, not to hold, not a
-- new time or reason); only a hold may be released. Enforced here so no client can bypass it.
CREATE FUNCTION certificates_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status <> 'good' THEN
            RAISE EXCEPTION 'certificate % of issuer % is %; its status row cannot be deleted',
                encode(OLD.serial, 'hex'), OLD.issuer_id, OLD.status
                USING ERRCODE = 'integrity_constraint_violation', HINT = 'RM1.3';
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
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;
CREATE TRIGGER certificates_guard BEFORE UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION certificates_guard();

CREATE TYPE status_action AS ENUM ('revoke', 'hold', 'release');

-- Every status change as requested, with the time it was received and the time it reached
-- the certificates table, so the 60-minute rule (RM1.1) is measured per request.
CREATE TABLE revocation_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id        integer NOT NULL REFERENCES issuers (id),
    serial           bytea NOT NULL,
    action           status_action NOT NULL,
    reason           smallint,
    revoked_at       timestamptz,
    invalidity_date  timestamptz,
    requested_by     text NOT NULL DEFAULT session_user,
    received_at      timestamptz NOT NULL,
    applied_at       timestamptz,
    FOREIGN KEY (issuer_id, serial) REFERENCES certificates (issuer_id, serial)
);
CREATE INDEX revocation_requests_pending ON revocation_requests (received_at) WHERE applied_at IS NULL;
CREATE INDEX revocation_requests_cert ON revocation_requests (issuer_id, serial);

REVOKE ALL ON issuers, certificates, revocation_requests FROM PUBLIC;
GRANT SELECT ON issuers, certificates, revocation_requests TO ocspd_responder;
GRANT SELECT, INSERT ON issuers TO ocspd_operator;
GRANT SELECT, INSERT, UPDATE ON certificates TO ocspd_operator;
GRANT SELECT, INSERT, UPDATE ON revocation_requests TO ocspd_operator;
