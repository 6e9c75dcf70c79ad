"""Small shared helpers: image IO, atomic writes, content hashes."""
