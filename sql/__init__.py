"""The status database's versioned migrations, installed as the ocspd.migrations package.

Files are named NNNN_description.sql and applied in order by `ocspd db migrate`.
"""
