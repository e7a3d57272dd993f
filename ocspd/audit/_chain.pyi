# Types of ocspd/audit/_chain.c (see ocspd.audit.requests.chain_records_py, its reference).

def chain(
    key: bytes, head: bytes, seq: int, records: list[tuple[int, bool, bytes, bytes, bytes]]
) -> tuple[bytes, bytes]: ...
