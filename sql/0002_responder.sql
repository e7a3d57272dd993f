-- 0002: what the responder needs beyond the status itself.
--
-- 1. A change feed that works on streaming replicas, where NOTIFY never arrives: every row
--    carries the id of the transaction that last wrote it (xid8). A responder remembers the
--    snapshot of its previous poll and asks for rows written by transactions that snapshot
--    did not see; unlike a timestamp watermark this cannot miss a long transaction that
--    commits late.
ALTER TABLE certificates ADD COLUMN change_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX certificates_change_xid ON certificates (change_xid);

CREATE FUNCTION certificates_change_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER certificates_change_xid BEFORE INSERT OR UPDATE ON certificates
    FOR EACH ROW EXECUTE FUNCTION certificates_change_xid();

-- 2. Signed responses shared by a fleet of responders, so each is signed once. A stored
--    response is only used while its change_xid equals the certificate's: a status change
--    makes it stale at once, whatever its nextUpdate says.
CREATE TABLE ocsp_responses (
    cert_id      bytea PRIMARY KEY,          -- the DER CertID it answers (RS1.4)
    issuer_id    integer NOT NULL REFERENCES issuers (id),
    serial       bytea NOT NULL,
    change_xid   xid8 NOT NULL,
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    der          bytea NOT NULL
);
CREATE INDEX ocsp_responses_cert ON ocsp_responses (issuer_id, serial);

REVOKE ALL ON ocsp_responses FROM PUBLIC;
-- The responder may cache signatures; it still cannot change any status (R11).
GRANT SELECT, INSERT, UPDATE, DELETE ON ocsp_responses TO ocspd_responder;
GRANT SELECT ON ocsp_responses TO ocspd_operator;
