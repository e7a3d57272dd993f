-- 0003: CRL publication (crlgen).

-- The key that signs CRLs: the CA key (CG1.4). NULL when the CA signs its own OCSP responses,
-- where responder_key already is the CA key.
ALTER TABLE issuers ADD COLUMN ca_key text;

-- Status changes carry the transaction that applied them, so crlgen can tell which changes a
-- CRL does not hold yet (compare the snapshot the CRL was read in), on a primary or replica.
ALTER TABLE revocation_requests ADD COLUMN change_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX revocation_requests_change_xid ON revocation_requests (issuer_id, change_xid);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ocspd_publisher') THEN
        CREATE ROLE ocspd_publisher NOLOGIN;
    END IF;
END
$$;
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'ocspd_publisher', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT ocspd_publisher TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'login % cannot use the role ocspd_publisher', current_user
                USING HINT = format('as a superuser run: GRANT ocspd_publisher TO %I', current_user);
        END;
    END IF;
END
$$;

-- AR1.2: every CRL signed, archived with its hash. Rows are never changed or removed.
CREATE TABLE crls (
    issuer_id    integer NOT NULL REFERENCES issuers (id),
    -- cRLNumber: strictly increasing per issuer, never reused (the primary key guarantees it
    -- even if two schedulers race); up to 20 octets (RFC 5280 5.2.3).
    crl_number   numeric(49, 0) NOT NULL CHECK (crl_number > 0),
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL CHECK (next_update > this_update),
    entries      bigint NOT NULL,
    sha256       bytea NOT NULL CHECK (octet_length(sha256) = 32),
    der          bytea NOT NULL,
    -- The snapshot the status was read in: changes it did not see are not on this CRL.
    snapshot     text NOT NULL,
    signed_by    text NOT NULL DEFAULT session_user,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (issuer_id, crl_number)
);

CREATE FUNCTION crls_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'archived CRLs cannot be changed or deleted (AR1.2)'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER crls_immutable BEFORE UPDATE OR DELETE ON crls
    FOR EACH ROW EXECUTE FUNCTION crls_immutable();

REVOKE ALL ON crls FROM PUBLIC;
GRANT SELECT ON issuers, certificates, revocation_requests TO ocspd_publisher;
GRANT SELECT, INSERT ON crls TO ocspd_publisher;
GRANT SELECT ON crls TO ocspd_operator, ocspd_responder;
