"""Replacing the embedder on a running device: a signed release received in chunks (`update`), checked on
real images (`check`), installed beside the old one with the templates rebuilt (`install`)."""
