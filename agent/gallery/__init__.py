"""The gallery: who is enrolled (SQLite, `store`), who a face is (in-memory 1:N search, `matcher`), how
long data is kept (`retention`) and how every write to the file reaches the live matcher (`sync`).

`schema` holds the table definitions, the forward migrations and the checks that refuse a file that is
corrupt, foreign or newer than this code. Import the submodules directly; this package imports nothing
so that loading the matcher never drags SQLite in, and the reverse.
"""
